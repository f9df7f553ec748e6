"""Shared set-up: 8 host devices for the sharding tests, and small helpers."""

import os

# Must be set before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "2")

# paddlepaddle 3.3.1 and paddle2onnx 2.1 segfault when imported after TensorFlow (which tfds
# and clu bring in), and this one process runs both: they go first (see interop/_paddle.py).
import paddle  # noqa: E402, F401
import paddle2onnx  # noqa: E402, F401

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import vitjax  # noqa: E402

# Full-size models checked in the fast suite; every other full-size model is `slow`.
FAST_FULL_SIZE = ("TNT_small", "DeiT_tiny_patch16_224", "DeiT_small_distilled_patch16_224")
TEST_SIZE = tuple(vitjax.list_models(include_test=True)[len(vitjax.list_models()):])


def random_images(model_name: str, batch: int = 2, seed: int = 0, img_size: int | None = None) -> np.ndarray:
    """NCHW float32 images, roughly normalized."""
    size = img_size or vitjax.get_spec(model_name).img_size
    return np.random.RandomState(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def model_params(names, slow_unless=FAST_FULL_SIZE):
    """pytest params for model names, marking full-size models outside `slow_unless` as slow."""
    return [
        pytest.param(n, marks=() if (n in slow_unless or n in TEST_SIZE) else pytest.mark.slow) for n in names
    ]


@pytest.fixture(autouse=True)
def _paddle_seed():
    paddle.seed(1234)
