"""Helpers shared by both test trees (imported as ``testutil``; ``tests/`` is on pytest's pythonpath)."""

import contextlib

import numpy as np
import pytest

import vitjax

# Full-size models checked in the fast suite; every other full-size model is `slow`.
FAST_FULL_SIZE = ("TNT_small", "DeiT_tiny_patch16_224", "DeiT_small_distilled_patch16_224")
TEST_SIZE = tuple(vitjax.list_models(include_test=True)[len(vitjax.list_models()) :])


def random_images(model_name: str, batch: int = 2, seed: int = 0, img_size: int | None = None) -> np.ndarray:
    """NCHW float32 images, roughly normalized."""
    size = img_size or vitjax.get_spec(model_name).img_size
    return np.random.RandomState(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def model_params(names, slow_unless=FAST_FULL_SIZE):
    """pytest params for model names, marking full-size models outside `slow_unless` as slow."""
    return [pytest.param(n, marks=() if (n in slow_unless or n in TEST_SIZE) else pytest.mark.slow) for n in names]


def skip_module_unless_onednn_kernel_builds() -> None:
    """Skips the calling test module unless the ``cpu-kernels`` extra is installed and the oneDNN
    kernel (``vitjax.kernels.onednn``) builds and loads here."""
    import importlib.metadata

    try:
        importlib.metadata.version("onednn-cpu-gomp")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the cpu-kernels extra (onednn-cpu-gomp) is not installed", allow_module_level=True)
    from vitjax.kernels import onednn

    if not onednn.available():
        pytest.skip(f"the oneDNN kernel does not build here: {onednn.unavailable_reason()}", allow_module_level=True)


# --- serving (interop.serving): one place to start a server and read it, for every serving test module


class TinyPredictor:
    """A numpy "model" for serving tests: probabilities from each image's first 10 values (fast, deterministic)."""

    backend, img_size = "numpy", 32

    def predict(self, images: np.ndarray) -> np.ndarray:
        logits = images.reshape(len(images), -1)[:, :10].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def tiny_model():
    """A ``ServedModel`` around :class:`TinyPredictor`, with the 32-pixel test model's eval transform."""
    from interop.serving import ServedModel

    return ServedModel(
        name="tiny",
        backend="numpy",
        predictor=TinyPredictor(),
        transform=vitjax.get_spec("DeiT_test_patch8_32").eval_transform,
        labels=[f"class {i}" for i in range(10)],
        outputs_probabilities=True,
        source="-",
    )


def png_bytes() -> bytes:
    """A 40x40 RGB PNG of random pixels."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


def wait_ready(url: str, deadline: float) -> None:
    """Polls ``GET /ready`` until 200; fails the test at ``deadline`` (``time.monotonic()``)."""
    import time

    from interop.serving.client import Client

    client = Client(url, timeout=10)
    try:
        while client.get("/ready").status != 200:
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.02)
    finally:
        client.close()


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample from the server's ``/metrics`` (0 when absent); ``labels`` as written there, without braces."""
    import re

    from interop.serving.client import Client

    text = Client(url, timeout=10).get("/metrics").text
    match = re.search(rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@contextlib.contextmanager
def serving_in_thread(app, ready_within_s: float = 120.0):
    """``app`` under uvicorn with our connection guard on an ephemeral 127.0.0.1 port, in a thread;
    yields its URL once ``/ready`` says so, and stops the server on exit."""
    import threading
    import time

    import uvicorn

    from interop.serving.connections import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + ready_within_s
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        wait_ready(url, deadline)
        yield url
    finally:
        server.should_exit = True
        thread.join(60)


@contextlib.contextmanager
def serve_command(model_dir, *flags: str, ready_within_s: float = 120.0):
    """``python -m interop serve MODEL_DIR --backend onnxruntime --port 0 --threads 1 FLAGS`` in a subprocess
    on 127.0.0.1; yields ``(proc, url)`` once ready, and kills the process on exit if it still runs."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    command = [sys.executable, "-m", "interop", "serve", str(model_dir), "--backend", "onnxruntime"]
    command += ["--port", "0", "--threads", "1", *flags]
    proc = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[-1]
        wait_ready(url, time.monotonic() + ready_within_s)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


class InMemoryImages:
    """A training source (``vitjax.data.sources.Source``) over images held in a list: image ``i``
    has label ``i % 3`` and is described as ``{name}[i]``."""

    num_classes, class_names = 3, None

    def __init__(self, images, name: str):
        self.images, self.name = list(images), name

    def __len__(self):
        return len(self.images)

    def load(self, index):
        return self.images[index], index % 3

    def describe(self, index):
        return f"{self.name}[{index}]"
