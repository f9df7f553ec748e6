"""The HTTP inference server (``python -m interop serve``), on 127.0.0.1 only.

It must compute what the offline JAX path computes (same eval transform, top-5 ids
exact, probabilities within the backend's parity tolerance), batch concurrent requests,
answer every bad input with a one-line 4xx while valid requests in flight still get the
right answer, and finish in-flight requests on SIGTERM while refusing new ones.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest
from PIL import Image
from testutil import metric, serve_command, serving_in_thread

import interop
import vitjax
from interop.deploy import create_predictor
from interop.inference import InferenceModelError
from interop.parity import TOLERANCES, default_photos, photo_batch
from interop.serving import ServeConfig, create_app, load_served_model
from interop.serving.client import Client, Response, json_body, multipart_body

uvicorn = pytest.importorskip("uvicorn")

NAME = "DeiT_test_patch8_32"
ATOL = TOLERANCES["fp32"].probs  # 1e-4


def init_variables(name: str, seed: int):
    size = vitjax.get_spec(name).img_size
    return jax.jit(vitjax.create_model(name).init)(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32))


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def jpeg(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def offline_top5(variables, name: str, photos) -> tuple[np.ndarray, np.ndarray]:
    """The offline reference: the eval transform + our JAX model with softmax, top-5 ids and probabilities."""
    probs = create_predictor("jax", variables=variables, model_name=name, softmax=True).predict(
        photo_batch(photos, name)
    )
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :5]
    return ids, np.take_along_axis(probs, ids, axis=-1)


def served_top5(response) -> tuple[np.ndarray, np.ndarray]:
    assert response.status == 200, response.text
    rows = [p["top_k"] for p in response.json()["predictions"]]
    return np.array([[c["id"] for c in r] for r in rows]), np.array([[c["probability"] for c in r] for r in rows])


def assert_same_top5(response, expected) -> None:
    ids, probs = served_top5(response)
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_allclose(probs, expected[1], rtol=0, atol=ATOL)


@contextlib.contextmanager
def serving(model, config: ServeConfig):
    """The real app under uvicorn (with our connection guard) on an ephemeral 127.0.0.1 port, in a thread; yields its URL once ready."""
    try:
        with serving_in_thread(create_app(model, config)) as url:
            yield url
    finally:
        model.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The test-size model: variables, its exported (softmax) inference dir with inference.onnx."""
    root = tmp_path_factory.mktemp("served")
    variables = init_variables(NAME, seed=3)
    model_dir = interop.export_inference_model(variables, NAME, root / "model")
    interop.export_onnx(model_dir)
    return variables, model_dir


@pytest.fixture(scope="module")
def photos():
    photos = default_photos()
    if not photos:
        pytest.skip("scikit-image's sample photos are not installed")
    return photos


# Limits small enough to hit cheaply in the fault tests.
LIMITS = ServeConfig(
    max_batch_size=8, max_wait_ms=20, max_images_per_request=4, max_body_bytes=1 << 20, max_pixels=4_000_000
)


@pytest.fixture(scope="module")
def server(exported):
    """One onnxruntime server on the test-size model, shared by the fault and load tests."""
    _, model_dir = exported
    with serving(load_served_model(model_dir, "onnxruntime", threads=1), LIMITS) as url:
        yield url


@pytest.mark.parametrize("backend", ["jax", "onnxruntime", "paddle-cpu"])
def test_server_top5_on_photos_equals_the_offline_jax_path(exported, photos, backend):
    variables, model_dir = exported
    expected = offline_top5(variables, NAME, photos)
    encoded = [png(image) for _, image in photos]  # lossless: the server decodes the very pixels we transformed
    with serving(load_served_model(model_dir, backend, threads=1), ServeConfig(max_batch_size=4)) as url:
        client = Client(url)
        assert_same_top5(client.classify(encoded), expected)
        assert_same_top5(client.classify(encoded, encoding="json"), expected)
        for i, data in enumerate(encoded):
            ids, probs = served_top5(client.classify([data], encoding="raw"))
            np.testing.assert_array_equal(ids[0], expected[0][i])
        labels = client.get("/labels").json()
        assert labels["num_classes"] == 1000 and labels["labels"][0] == "tench, Tinca tinca"
        assert (
            client.classify(encoded[:1], top_k=3).json()["predictions"][0]["top_k"][0]["name"]
            == labels["labels"][expected[0][0][0]]
        )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "jax"])
def test_full_size_model_from_pdparams_serves_the_offline_jax_top5(tmp_path, photos, backend):
    """DeiT-tiny at 224 (resize 256, bicubic, crop): the transform matters here; served from a .pdparams file."""
    name = "DeiT_tiny_patch16_224"
    variables = init_variables(name, seed=5)
    weights = tmp_path / "w.pdparams"
    vitjax.save_pdparams(variables, name, weights)
    expected = offline_top5(variables, name, photos)
    with serving(
        load_served_model(weights, backend, threads=2, max_batch_size=4), ServeConfig(max_batch_size=4)
    ) as url:
        assert_same_top5(Client(url).classify([png(image) for _, image in photos]), expected)


def test_ready_only_after_a_warm_up_batch_of_every_size_the_batcher_runs(exported, photos):
    from starlette.testclient import TestClient

    model = load_served_model(exported[1], "jax")
    cold = TestClient(create_app(model, ServeConfig(max_batch_size=8)))  # lifespan not started: no warm-up yet
    assert cold.get("/health").status_code == 200
    assert cold.get("/ready").status_code == 503
    reply = cold.post("/classify", content=png(photos[0][1]), headers={"content-type": "image/png"})
    assert reply.status_code == 503 and "warming up" in reply.json()["error"]
    with serving(model, ServeConfig(max_batch_size=8)) as url:
        assert Client(url).get("/ready").json()["status"] == "ready"
        assert model.predictor._forward._cache_size() == 4  # batch buckets 1, 2, 4, 8 compiled before ready
        assert Client(url).get("/health").json() == {"status": "alive"}


def test_a_request_that_arrived_before_sigterm_is_served_though_its_body_ends_after(exported, photos):
    from starlette.testclient import TestClient

    variables, model_dir = exported
    data, expected = png(photos[3][1]), offline_top5(variables, NAME, photos[3:4])
    with TestClient(
        create_app(load_served_model(model_dir, "onnxruntime", threads=1), ServeConfig(max_batch_size=2))
    ) as client:
        state, deadline = client.app.state.serving, time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.05)

        def body_during_which_sigterm_lands():
            state.draining = True  # what the server's SIGTERM handler sets
            yield data

        arrived_before = client.post(
            "/classify", content=body_during_which_sigterm_lands(), headers={"content-type": "image/png"}
        )
        assert_same_top5(
            Response(arrived_before.status_code, dict(arrived_before.headers), arrived_before.content), expected
        )
        arrived_after = client.post("/classify", content=data, headers={"content-type": "image/png"})
        assert arrived_after.status_code == 503 and arrived_after.json() == {"error": "server is shutting down"}


def test_kserve_v2_infer_gives_the_predictor_probabilities(server, exported, photos):
    variables, _ = exported
    client = Client(server)
    images = photo_batch(photos[:2], NAME)
    request = {
        "id": "r1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(images.shape), "data": images.reshape(-1).tolist()}],
    }
    reply = client.request("POST", f"/v2/models/{NAME}/infer", json.dumps(request).encode(), "application/json")
    assert reply.status == 200, reply.text
    out = reply.json()
    assert out["id"] == "r1" and out["outputs"][0]["shape"] == [2, 1000]
    expected = create_predictor("jax", variables=variables, model_name=NAME).predict(images)
    np.testing.assert_allclose(np.array(out["outputs"][0]["data"]).reshape(2, 1000), expected, rtol=0, atol=ATOL)
    body, _ = json_body([png(image) for _, image in photos[:2]])
    request = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": json.loads(body)["images"]}]}
    reply = client.request("POST", f"/v2/models/{NAME}/infer", json.dumps(request).encode(), "application/json")
    np.testing.assert_allclose(
        np.array(reply.json()["outputs"][0]["data"]).reshape(2, 1000), expected, rtol=0, atol=ATOL
    )
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{NAME}").json()["inputs"][0]["shape"] == [-1, 3, 32, 32]


def test_kserve_v2_uint8_pixels_go_through_the_eval_transform(server, exported):
    """``UINT8 [N, H, W, 3]`` RGB pixels: the server applies the eval transform, as ``predict`` does."""
    from vitjax.data.transforms import preprocess_eval

    variables, _ = exported
    pixels = np.random.default_rng(7).integers(0, 256, (2, 40, 52, 3), np.uint8)
    request = {
        "inputs": [
            {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.reshape(-1).tolist()}
        ]
    }
    reply = Client(server).request("POST", f"/v2/models/{NAME}/infer", json.dumps(request).encode(), "application/json")
    assert reply.status == 200, reply.text
    transform = vitjax.get_spec(NAME).eval_transform
    images = np.stack([preprocess_eval(p, transform).transpose(2, 0, 1) for p in pixels]).astype(np.float32)
    expected = create_predictor("jax", variables=variables, model_name=NAME).predict(images)
    np.testing.assert_allclose(
        np.array(reply.json()["outputs"][0]["data"]).reshape(2, 1000), expected, rtol=0, atol=ATOL
    )


def test_metrics_are_prometheus_text_with_requests_errors_latency_batches_and_queue(server, photos):
    client = Client(server)
    assert client.classify([png(photos[0][1])]).status == 200
    assert client.request("POST", "/classify", b"", "image/png").status == 400
    reply = client.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = dict(line.rsplit(" ", 1) for line in reply.text.splitlines() if line and not line.startswith("#"))
    assert float(samples['vitjax_serve_requests_total{code="200",endpoint="/classify"}']) >= 1
    assert float(samples['vitjax_serve_requests_total{code="400",endpoint="/classify"}']) >= 1
    assert float(samples['vitjax_serve_errors_total{kind="empty_input"}']) >= 1
    assert float(samples['vitjax_serve_request_seconds_count{endpoint="/classify"}']) >= 2
    assert 'vitjax_serve_request_seconds_bucket{endpoint="/classify",le="0.005"}' in samples
    assert (
        float(samples['vitjax_serve_batch_size_bucket{le="8.0"}'])
        == float(samples["vitjax_serve_batch_size_count"])
        >= 1
    )
    assert float(samples["vitjax_serve_images_total"]) >= 1
    assert float(samples["vitjax_serve_queue_depth"]) == 0  # nothing waiting once the answers are in
    assert float(samples["vitjax_serve_in_flight_requests"]) == 1  # this very /metrics request
    assert "vitjax_serve_inference_seconds_bucket" in reply.text


def test_serve_command_defaults_are_safe_for_a_service():
    """Loopback only, limits on body size, images, pixels, queue and concurrency, unless told otherwise."""
    from interop.__main__ import build_parser

    args = build_parser().parse_args(["serve", "model_dir"])
    assert args.host == "127.0.0.1" and args.backend == "paddle-cpu" and args.port == 8080
    assert args.max_body_mb == 16 and args.max_images == 32 and args.max_pixels == 40_000_000
    assert args.max_queue == 256 and args.max_concurrency == 128 and args.timeout == 30
    assert (
        args.header_timeout == 10 and args.body_timeout == 60 and args.keep_alive_timeout == 5
    )  # slow or silent clients cut
    assert args.min_body_rate == 1024 and args.body_rate_window == 5
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        ServeConfig(max_batch_size=0)


def bad_requests(photo: np.ndarray) -> list[tuple[str, int, str, dict]]:
    """``(what, status, error kind, request)`` for every kind of bad input."""
    good = jpeg(photo)
    big = np.zeros((2100, 2100, 3), np.uint8)  # 4.4 MP > LIMITS.max_pixels, a tiny PNG
    strip = np.zeros((1, 4000, 3), np.uint8)  # 4000 x 1: resized to 144000 x 36 = 5.2 MP > LIMITS.max_pixels
    many, many_type = multipart_body([good] * 5)
    no_files = b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\nhello\r\n--b--\r\n'
    raw = lambda data, ctype="application/octet-stream": dict(
        method="POST", path="/classify", body=data, content_type=ctype
    )  # noqa: E731
    v2 = lambda payload: dict(
        method="POST",
        path=f"/v2/models/{NAME}/infer",
        body=json.dumps(payload).encode(),
        content_type="application/json",
    )  # noqa: E731
    return [
        ("not an image", 400, "bad_image", raw(b"this is not an image" * 10, "image/jpeg")),
        ("truncated JPEG", 400, "bad_image", raw(good[: len(good) // 2], "image/jpeg")),
        ("zero-byte body", 400, "empty_input", raw(b"", "image/jpeg")),
        (
            "zero-byte file",
            400,
            "empty_input",
            dict(zip(("body", "content_type"), multipart_body([b""])), method="POST", path="/classify"),
        ),
        ("decompression bomb", 400, "image_too_large", raw(png(big))),
        ("extreme aspect ratio", 400, "image_too_large", raw(png(strip))),
        ("too many images (multipart)", 400, "too_many_images", raw(many, many_type)),
        ("too many images (JSON)", 400, "too_many_images", raw(json_body([good] * 5)[0], "application/json")),
        ("body over the limit", 413, "body_too_large", raw(b"\xff" * (LIMITS.max_body_bytes + 1), "image/jpeg")),
        (
            "chunked body over the limit",
            413,
            "body_too_large",
            dict(raw(b"", "image/jpeg"), chunks=[b"\xff" * 65536] * 17),
        ),
        ("wrong content type", 415, "unsupported_media_type", raw(good, "text/plain")),
        ("no content type", 415, "unsupported_media_type", raw(good, None)),
        ("malformed JSON", 400, "malformed_request", raw(b'{"images": [', "application/json")),
        ("JSON of the wrong shape", 400, "malformed_request", raw(b'{"images": "abc"}', "application/json")),
        ("malformed base64", 400, "malformed_request", raw(b'{"images": ["not base64!"]}', "application/json")),
        ("multipart without files", 400, "empty_input", raw(no_files, "multipart/form-data; boundary=b")),
        ("multipart without a boundary", 400, "malformed_request", raw(b"garbage", "multipart/form-data")),
        ("bad top_k", 400, "malformed_request", dict(raw(good, "image/jpeg"), path="/classify?top_k=0")),
        (
            "GET on classify",
            405,
            "method_not_allowed",
            dict(method="GET", path="/classify", body=None, content_type=None),
        ),
        ("unknown path", 404, "not_found", dict(method="GET", path="/../../etc/passwd", body=None, content_type=None)),
        ("v2 unknown model", 404, "unknown_model", dict(v2({"inputs": []}), path="/v2/models/nope/infer")),
        (
            "v2 wrong input shape",
            400,
            "malformed_request",
            v2({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}]}),
        ),
        (
            "v2 unsupported datatype",
            400,
            "malformed_request",
            v2({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}]}),
        ),
        (
            "v2 data of the wrong size",
            400,
            "malformed_request",
            v2({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0]}]}),
        ),
    ]


def send(url: str, method: str, path: str, body: bytes | None, content_type: str | None, chunks=None):
    """One request on a fresh connection; ``chunks`` sends a chunked body (no Content-Length)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        if chunks is not None:
            conn.request(method, path, body=iter(chunks), headers=headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def test_every_bad_input_gets_a_one_line_4xx_while_valid_requests_stay_right(server, exported, photos):
    variables, _ = exported
    photo = photos[1][1]
    good = png(photo)
    expected = offline_top5(variables, NAME, photos[1:2])
    stop, answers, failures = threading.Event(), [], []

    def valid_traffic():
        client = Client(server)
        while not stop.is_set():
            try:
                assert_same_top5(client.classify([good]), expected)
                answers.append(1)
            except Exception as e:  # recorded, asserted below
                failures.append(repr(e))

    cases = bad_requests(photo)
    errors_before = {kind: metric(server, "vitjax_serve_errors_total", f'kind="{kind}"') for _, _, kind, _ in cases}
    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            pool.submit(valid_traffic)
        try:
            for what, status, _kind, request in cases:
                got, body = send(server, **request)
                assert got == status, f"{what}: {got} {body[:200]!r}"
                error = json.loads(body)["error"]
                assert error and "\n" not in error and "Traceback" not in error, what
        finally:
            stop.set()
    assert not failures, failures[:3]
    assert len(answers) >= 3
    for _, _, kind, _ in cases:
        assert metric(server, "vitjax_serve_errors_total", f'kind="{kind}"') > errors_before[kind], kind
    assert Client(server).get("/ready").status == 200
    assert_same_top5(Client(server).classify([good]), expected)


def load(url: str, data: bytes, clients: int, requests_each: int, expected) -> list[str]:
    """``clients`` threads, each sending ``requests_each`` single-image requests at once; returns failures."""
    barrier, failures = threading.Barrier(clients), []

    def one_client():
        client = Client(url)
        barrier.wait()
        for _ in range(requests_each):
            try:
                assert_same_top5(client.classify([data]), expected)
            except Exception as e:  # recorded, asserted by the caller
                failures.append(repr(e))

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return failures


def test_short_load_every_request_answered_right_none_lost_and_batched(server, exported, photos):
    variables, _ = exported
    data, expected = png(photos[2][1]), offline_top5(variables, NAME, photos[2:3])
    images_before = metric(server, "vitjax_serve_images_total")
    batches_before = metric(server, "vitjax_serve_batch_size_count")
    singles_before = metric(server, "vitjax_serve_batch_size_bucket", 'le="1.0"')
    failures = load(server, data, clients=12, requests_each=8, expected=expected)
    assert not failures, failures[:3]
    assert metric(server, "vitjax_serve_images_total") - images_before == 96  # every request ran exactly once
    batches = metric(server, "vitjax_serve_batch_size_count") - batches_before
    singles = metric(server, "vitjax_serve_batch_size_bucket", 'le="1.0"') - singles_before
    assert batches < 96 and singles < batches  # dynamic batching: some batches held more than one image
    assert metric(server, "vitjax_serve_batch_size_bucket", 'le="8.0"') == metric(
        server, "vitjax_serve_batch_size_count"
    )


def test_request_past_its_timeout_gets_504_and_a_full_queue_503(exported, photos):
    _, model_dir = exported
    config = ServeConfig(max_batch_size=8, max_wait_ms=3000, request_timeout_s=0.2, max_queue_images=3)
    with serving(load_served_model(model_dir, "onnxruntime", threads=1), config) as url:
        client, data = Client(url), png(photos[0][1])
        reply = client.classify([data])  # waits for 7 more images that never come
        assert reply.status == 504 and "0.2 s" in reply.json()["error"]
        reply = client.classify([data] * 4)
        assert reply.status == 503 and reply.headers["retry-after"] == "1" and "queued" in reply.json()["error"]
        assert client.get("/health").status == 200


def test_labels_file_must_match_the_model(exported, tmp_path):
    _, model_dir = exported
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(InferenceModelError, match="three.txt: 3 names for a model with 1000 classes"):
        load_served_model(model_dir, "onnxruntime", labels=tmp_path / "three.txt")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"thing {i}" for i in range(1000)))
    assert load_served_model(model_dir, "onnxruntime", labels=names).labels[7] == "thing 7"


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(exported, photos):
    variables, model_dir = exported
    data, expected = png(photos[3][1]), offline_top5(variables, NAME, photos[3:4])
    flags = ["--max-batch-size", "16", "--max-wait-ms", "3000", "--log-level", "warning"]
    with serve_command(model_dir, *flags) as (proc, url):
        results = []
        threads = [threading.Thread(target=lambda: results.append(Client(url).classify([data]))) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while metric(url, "vitjax_serve_in_flight_requests") < 4:  # 3 waiting in the batcher + this /metrics
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        port = int(url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 2
        while True:  # the listening socket closes within uvicorn's 0.1 s tick
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "new connections still accepted after SIGTERM"
            time.sleep(0.02)
        assert any(t.is_alive() for t in threads)  # refused new connections while the old ones were still waiting
        for t in threads:
            t.join(30)
        assert len(results) == 3
        for reply in results:
            assert_same_top5(reply, expected)
        assert proc.wait(30) == 0


def test_kserve_v2_refuses_non_finite_values_and_names_the_expected_tensors(server):
    """NaN/Inf inputs and unknown input or output names are 400s, not 200s with ``null`` probabilities."""
    client = Client(server)

    def infer(payload):
        reply = client.request("POST", f"/v2/models/{NAME}/infer", json.dumps(payload).encode(), "application/json")
        return reply.status, reply.json()

    good = np.zeros((1, 3, 32, 32), np.float32).reshape(-1).tolist()
    x = {"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": good}
    assert infer({"inputs": [x]})[0] == 200
    for bad in (float("nan"), float("inf"), -float("inf")):
        status, body = infer({"inputs": [{**x, "data": [bad] + good[1:]}]})
        assert status == 400 and "NaN or infinite" in body["error"], body
    status, body = infer({"inputs": [{**x, "name": "input_1"}]})
    assert status == 400 and "'input_1'" in body["error"] and "'x'" in body["error"] and "'images'" in body["error"], (
        body
    )
    status, body = infer({"inputs": [{**x, "name": "images"}]})  # a known name with another tensor's datatype
    assert status == 400 and "BYTES" in body["error"], body
    status, body = infer({"inputs": [x], "outputs": [{"name": "logits"}]})
    assert status == 400 and "'logits'" in body["error"] and "'probabilities'" in body["error"], body
    status, body = infer({"inputs": [x], "outputs": [{"name": "probabilities"}]})
    assert status == 200 and body["outputs"][0]["name"] == "probabilities"
