"""PaddleClas's eval preprocessing, step for step.

``ResizeImage(resize_short)`` with the PIL backend, ``CropImage`` and
``NormalizeImage``: the short side is scaled to ``resize_short`` (each side rounded
with Python's ``round``), the center ``crop_size`` square is cut (extra pixel to the
right/bottom), and pixels are normalized in float32 as ``(x * float32(1/255) - mean) / std``.
Output is an HWC float32 array (our models take NHWC).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from vitjax.eval_transform import EvalTransform

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


_SIXTEEN_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N")
_EXIF_ORIENTATION = 0x0112


def to_rgb(image: Image.Image) -> np.ndarray:
    """An opened PIL image -> RGB HWC uint8, as PaddleClas's OpenCV decoding gives it.

    The one decoding step of ``predict``, the training data and the HTTP server:

    * EXIF orientation applied (``cv2.imread``/``imdecode``, which PaddleClas decodes
      with, apply it; timm's loaders, a plain ``convert("RGB")``, do not), so a phone
      photo is not classified on its side;
    * 16-bit gray (``I;16*``) scaled to 8 bits by its high byte, as OpenCV does and as
      Pillow itself reads 16-bit RGB PNGs (``convert`` would clip it: all but black turns
      white); 32-bit integer and float images are refused (no agreed scale);
    * every other mode (palette, ``LA``, ``CMYK``, ``1``, ``RGBA``, ...) through Pillow's
      ``convert("RGB")``; alpha is dropped, as OpenCV's ``IMREAD_COLOR`` drops it.

    Raises ``ValueError`` for what it cannot convert.
    """
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF is metadata we can do without; OpenCV ignores it too
        orientation = 1
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_GRAY:
        gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise ValueError(f"{kind} pixels have no agreed 8-bit scale; save the image with 8 or 16 bits per channel")
    if image.mode == "RGB":
        return np.asarray(image)
    with warnings.catch_warnings():  # palette + transparency: the colours are what we want, the alpha is dropped
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        return np.asarray(image.convert("RGB"))


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file to an RGB HWC uint8 array (see :func:`to_rgb`); a clear error names a bad file."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
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
