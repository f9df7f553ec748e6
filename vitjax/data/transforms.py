"""PaddleClas's eval preprocessing, step for step.

``ResizeImage(resize_short)`` with the PIL backend, ``CropImage`` and
``NormalizeImage``: the short side is scaled to ``resize_short`` (each side rounded
with Python's ``round``), the center ``crop_size`` square is cut (extra pixel to the
right/bottom), and pixels are normalized in float32 as ``(x * float32(1/255) - mean) / std``.
Output is an HWC float32 array (our models take NHWC).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from vitjax.models.registry import EvalTransform

_PIL_RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}


class ImageError(ValueError):
    """An image file that cannot be decoded."""


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file to an RGB HWC uint8 array; a clear error names a bad file."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from None


def resize_short(image: np.ndarray, size: int, interpolation: str = "bicubic") -> np.ndarray:
    height, width = image.shape[:2]
    percent = float(size) / min(width, height)
    new_w, new_h = int(round(width * percent)), int(round(height * percent))
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), _PIL_RESAMPLE[interpolation]))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    if height < size or width < size:
        raise ValueError(f"image of {width}x{height} is smaller than the {size}x{size} crop")
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    scale = np.float32(1.0 / 255.0)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (image.astype(np.float32) * scale - mean) / std


def preprocess_eval(image: np.ndarray, transform: EvalTransform) -> np.ndarray:
    """RGB HWC uint8 image -> the model's HWC float32 input, as PaddleClas's eval does."""
    image = resize_short(image, transform.resize_short, transform.interpolation)
    image = center_crop(image, transform.crop_size)
    return normalize(image, transform.mean, transform.std)
