"""The interop tree: Paddle, Paddle2ONNX and ONNX Runtime, the ``interop`` extra.

paddlepaddle 3.3.1 and paddle2onnx 2.1 segfault when imported after TensorFlow (which
tfds and clu bring in): they are imported here, before any test module.
"""

import paddle
import paddle2onnx  # noqa: F401
import pytest


@pytest.fixture(autouse=True)
def _paddle_seed():
    paddle.seed(1234)


@pytest.fixture(autouse=True)
def _xla_workers_unpinned():
    """A ``jax`` predictor pins XLA's CPU workers process-wide; each test starts with them free."""
    yield
    from vitjax.cpu_threads import unpin_xla_worker_threads

    unpin_xla_worker_threads()
