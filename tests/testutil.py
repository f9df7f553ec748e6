"""Helpers shared by both test trees (imported as ``testutil``; ``tests/`` is on pytest's pythonpath)."""

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
