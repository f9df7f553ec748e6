"""The cheaper implementations of the training pipeline's steps give the old values exactly."""

import numpy as np
import pytest

from vitjax.data import transforms
from vitjax.data.transforms import normalize

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def formula(image, mean, std):
    """``normalize`` as it was: float32 arithmetic on every pixel."""
    scale = np.float32(1.0 / 255.0)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (image.astype(np.float32) * scale - mean) / std


@pytest.mark.parametrize("opencv", [True, False])
@pytest.mark.parametrize(
    "shape, mean, std",
    [
        ((224, 224, 3), *IMAGENET),
        ((4, 31, 17, 3), *IMAGENET),  # a batch
        ((9, 5, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # TNT's
        ((9, 5, 3), 0.5, 0.25),  # scalars
        ((9, 5, 1), (0.5,), (0.25,)),
        ((9, 5, 4), (0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)),
        ((2, 3, 9, 5, 3), *IMAGENET),
        ((7, 3), *IMAGENET),
    ],
)
def test_normalize_looks_up_the_formulas_values_bit_for_bit(shape, mean, std, opencv, monkeypatch):
    if opencv:
        pytest.importorskip("cv2")
    else:
        monkeypatch.setattr(transforms, "_opencv", lambda: None)
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    image.reshape(-1)[: min(image.size, 256)] = np.arange(min(image.size, 256))  # every level where it fits
    out = normalize(image, mean, std)
    expected = formula(image, mean, std)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))  # the same bits, not just close


def test_normalize_of_a_flipped_view_and_of_floats_is_the_formulas():
    image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    flipped = image[:, ::-1]
    assert np.array_equal(normalize(flipped, *IMAGENET), formula(flipped, *IMAGENET))
    floats = image.astype(np.float32)
    assert np.array_equal(normalize(floats, *IMAGENET), formula(floats, *IMAGENET))
    table = transforms._normalize_table(*map(tuple, IMAGENET), 3)
    assert not table.flags.writeable  # shared by every call: nobody may change it
