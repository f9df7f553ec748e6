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
        result = client.infer(
            NAME,
            [x],
            outputs=outputs,
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
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


def test_tritonclient_reads_config_statistics_and_the_repository_index(server, exported, photos):
    client = httpclient.InferenceServerClient(server.removeprefix("http://"), connection_timeout=30, network_timeout=30)
    try:
        config = client.get_model_config(NAME)
        assert config["name"] == NAME and config["max_batch_size"] >= 1
        assert [(i["name"], i["dims"]) for i in config["input"]] == [("x", [3, 32, 32])]
        assert config["output"][0]["data_type"] == "TYPE_FP32"
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] >= 0
        assert client.get_model_config(NAME, "1") == config
        before = client.get_inference_statistics(NAME)["model_stats"][0]
        images = photo_batch(photos[:3], NAME)
        x = httpclient.InferInput("x", list(images.shape), "FP32")
        x.set_data_from_numpy(images)
        client.infer(NAME, [x])
        bad = httpclient.InferInput("x", [1, 3, 2, 2], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 2, 2), np.float32))
        with pytest.raises(Exception, match="does not fit the model input"):
            client.infer(NAME, [bad])
        after = client.get_inference_statistics(NAME, "1")["model_stats"][0]
        assert after["inference_count"] - before["inference_count"] == 3
        assert after["execution_count"] - before["execution_count"] == 1
        stats, old = after["inference_stats"], before["inference_stats"]
        assert stats["success"]["count"] - old["success"]["count"] == 1
        assert stats["fail"]["count"] - old["fail"]["count"] == 1
        for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            assert int(stats[phase]["ns"]) > int(old[phase]["ns"]), phase
        assert int(stats["success"]["ns"]) - int(old["success"]["ns"]) >= int(stats["compute_infer"]["ns"]) - int(
            old["compute_infer"]["ns"]
        )
        assert client.get_inference_statistics()["model_stats"][0]["name"] == NAME
        assert client.get_model_repository_index() == [{"name": NAME, "version": "1", "state": "READY"}]
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_the_classification_extension_gives_triton_top_k_strings(server, exported, photos, binary):
    variables, _ = exported
    images = photo_batch(photos[:2], NAME)
    expected = create_predictor("jax", variables=variables, model_name=NAME).predict(images)
    client = httpclient.InferenceServerClient(server.removeprefix("http://"), connection_timeout=30, network_timeout=30)
    try:
        x = httpclient.InferInput("x", list(images.shape), "FP32")
        x.set_data_from_numpy(images, binary_data=binary)
        top = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
        result = client.infer(NAME, [x], outputs=[top]).as_numpy("probabilities")
        assert result.shape == (2, 3)
        for row, entries in zip(expected, result):
            parsed = [(e.decode() if isinstance(e, bytes) else e).split(":", 2) for e in entries]
            assert [int(index) for _, index, _ in parsed] == list(np.argsort(-row, kind="stable")[:3])
            np.testing.assert_allclose([float(v) for v, _, _ in parsed], np.sort(row)[::-1][:3], atol=1e-5)
            assert all(label for _, _, label in parsed)
    finally:
        client.close()


def test_triton_metric_names_count_requests_on_metrics(server, exported, photos):
    import urllib.request

    def scrape() -> dict[str, float]:
        text = urllib.request.urlopen(f"{server}/metrics", timeout=30).read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("nv_inference_") and f'model="{NAME}"' in line:
                values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
        return values

    before = scrape()
    client = httpclient.InferenceServerClient(server.removeprefix("http://"), connection_timeout=30, network_timeout=30)
    try:
        images = photo_batch(photos[:2], NAME)
        x = httpclient.InferInput("x", list(images.shape), "FP32")
        x.set_data_from_numpy(images)
        client.infer(NAME, [x])
    finally:
        client.close()
    after = scrape()
    assert after["nv_inference_request_success_total"] - before["nv_inference_request_success_total"] == 1
    assert after["nv_inference_count_total"] - before["nv_inference_count_total"] == 2
    assert (
        after["nv_inference_compute_infer_duration_us_total"] > before["nv_inference_compute_infer_duration_us_total"]
    )


@pytest.mark.parametrize("accept, expected", [
    ("gzip", "gzip"), ("deflate", "deflate"), ("br, deflate;q=0.5, gzip;q=0.9", "gzip"), ("gzip;q=0", None),
    ("identity", None), ("", None),
])  # fmt: skip
def test_the_answer_is_compressed_as_the_client_accepts(accept, expected):
    from interop.serving.kserve import response_encoding

    assert response_encoding(accept) == expected


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_v2_answer_is_sent_compressed_when_asked(server, exported, photos, encoding):
    import gzip
    import json
    import urllib.request
    import zlib

    images = photo_batch(photos[:1], NAME)
    body = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": list(images.shape), "data": images.reshape(-1).tolist()}
            ]
        }
    ).encode()
    request = urllib.request.Request(
        f"{server}/v2/models/{NAME}/infer",
        data=body,
        headers={"Content-Type": "application/json", "Accept-Encoding": encoding},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.headers["Content-Encoding"] == encoding
        raw = reply.read()
    answer = json.loads(gzip.decompress(raw) if encoding == "gzip" else zlib.decompress(raw))
    assert (
        answer["outputs"][0]["shape"][0] == 1 and len(answer["outputs"][0]["data"]) == answer["outputs"][0]["shape"][1]
    )


@pytest.mark.parametrize(
    "body, encoding, problem",
    [
        (__import__("gzip").compress(b'{"inputs": []}', mtime=0)[:-9], "gzip", "truncated gzip stream"),
        (__import__("zlib").compress(b'{"inputs": []}') + b"junk", "deflate", "4 bytes after its deflate stream"),
    ],
    ids=["gzip-truncated", "deflate-padded"],
)  # fixed ids: pytest-xdist's workers must collect the same names
def test_truncated_or_padded_compressed_bodies_are_400s(body, encoding, problem):
    from interop.serving.errors import MalformedRequest
    from interop.serving.kserve import decompress

    with pytest.raises(MalformedRequest, match=problem):
        decompress(body, encoding, 1 << 20)


def test_a_header_length_in_non_ascii_digits_is_a_400_not_a_500():
    from interop.serving.errors import MalformedRequest
    from interop.serving.kserve import split_binary

    with pytest.raises(MalformedRequest, match="is not a length within"):
        split_binary(b'{"inputs": []}', "\u00b2")
