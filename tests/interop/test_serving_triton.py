"""Triton's own HTTP client (``tritonclient.http``) against the server, unchanged.

tritonclient sends tensors with the binary tensor extension by default
(``Inference-Header-Content-Length``); both that and the JSON form must give the
predictor's probabilities, also with gzip/deflate bodies and on the versioned route.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_serving import ATOL, NAME, exported, photos, png, server  # noqa: F401  (fixtures)

from interop.deploy import create_predictor
from interop.parity import photo_batch

httpclient = pytest.importorskip("tritonclient.http")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_tritonclient_fp32_and_bytes_inputs_give_the_predictor_probabilities(
    server, exported, photos, binary, compression
):
    variables, _ = exported
    images = photo_batch(photos[:2], NAME)
    expected = create_predictor("jax", variables=variables, model_name=NAME).predict(images)
    client = httpclient.InferenceServerClient(server.removeprefix("http://"), connection_timeout=30, network_timeout=30)
    try:
        x = httpclient.InferInput("x", list(images.shape), "FP32")
        x.set_data_from_numpy(images, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer(NAME, [x], outputs=outputs, request_compression_algorithm=compression)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=0, atol=ATOL)
        if binary:  # encoded images; no outputs named: tritonclient asks for binary outputs (binary_data_output)
            blobs = httpclient.InferInput("images", [2], "BYTES")
            blobs.set_data_from_numpy(
                np.array([png(image) for _, image in photos[:2]], dtype=np.object_), binary_data=True
            )
            result = client.infer(NAME, [blobs], model_version="1", request_compression_algorithm=compression)
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=0, atol=ATOL)
        else:  # (in JSON, tritonclient sends BYTES as UTF-8 text; this server takes base64 strings there)
            assert client.is_model_ready(NAME, "1") and client.is_server_live()
    finally:
        client.close()


def test_a_bad_binary_header_length_is_a_json_400(server):
    from interop.serving.client import Client

    reply = Client(server).request(
        "POST",
        f"/v2/models/{NAME}/infer",
        b'{"inputs": []}',
        "application/octet-stream",
        {"Inference-Header-Content-Length": "999"},
    )
    assert reply.status == 400 and "Inference-Header-Content-Length" in reply.json()["error"]
    reply = Client(server).request("POST", f"/v2/models/{NAME}/versions/7/infer", b"{}", "application/json")
    assert reply.status == 404 and "version" in reply.json()["error"]
