"""Encoded image bytes -> the model's input, through the same eval transform as ``predict``.

Decoding refuses, with a one-line reason: empty input, bytes PIL cannot identify,
truncated files (PIL's ``LOAD_TRUNCATED_IMAGES`` stays off), images of more than
``max_pixels`` pixels (checked from the header, before any pixel is decoded) and images
whose eval resize would exceed ``max_pixels`` (a 1 x 100000 strip resized to a short
side of 256 would otherwise allocate gigabytes).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from interop.serving.errors import BadImage, EmptyInput, ImageTooLarge
from vitjax.data.transforms import preprocess_eval, to_rgb
from vitjax.eval_transform import EvalTransform


def set_pixel_limit(max_pixels: int) -> None:
    """Sets PIL's decompression-bomb limit (process-wide) to ``max_pixels``.

    PIL raises ``DecompressionBombError`` only above twice its limit; :func:`decode_image`
    also checks the header size itself, so the limit that applies is exactly ``max_pixels``.
    """
    Image.MAX_IMAGE_PIXELS = int(max_pixels)


def decode_image(data: bytes, *, max_pixels: int, name: str = "image") -> np.ndarray:
    """RGB HWC uint8 array from encoded bytes (JPEG, PNG, ... anything PIL reads).

    The pixels are those ``predict`` decodes from a file (:func:`vitjax.data.transforms.to_rgb`:
    EXIF orientation applied, 16-bit scaled to 8, palette/LA/CMYK converted).
    """
    if not data:
        raise EmptyInput(f"{name}: empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageTooLarge(f"{name}: {width}x{height} image exceeds the limit of {max_pixels} pixels")
                if width < 1 or height < 1:
                    raise BadImage(f"{name}: image of size {width}x{height}")
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{name}: exceeds the decompression-bomb limit of {max_pixels} pixels ({e})") from None
    except Image.UnidentifiedImageError:
        raise BadImage(f"{name}: not an image PIL can identify ({len(data)} bytes)") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
    ) as e:  # truncated or corrupt data, or a mode with no 8-bit scale
        raise BadImage(f"{name}: cannot decode image ({e})") from None


def check_resized_size(image: np.ndarray, transform: EvalTransform, max_pixels: int, name: str = "image") -> None:
    """Refuses an image whose short-side resize (the transform's first step) would exceed ``max_pixels``."""
    height, width = image.shape[:2]
    scale = transform.resize_short / min(height, width)
    resized = round(height * scale) * round(width * scale)
    if resized > max_pixels:
        raise ImageTooLarge(
            f"{name}: {width}x{height} image would be resized to {resized} pixels (limit {max_pixels}); aspect ratio too extreme"
        )


def preprocess(data: bytes, transform: EvalTransform, *, max_pixels: int, name: str = "image") -> np.ndarray:
    """Encoded bytes -> CHW float32, exactly as ``predict`` mode and the parity report preprocess."""
    image = decode_image(data, max_pixels=max_pixels, name=name)
    return preprocess_array(image, transform, max_pixels=max_pixels, name=name)


def preprocess_array(
    image: np.ndarray, transform: EvalTransform, *, max_pixels: int, name: str = "image"
) -> np.ndarray:
    """RGB HWC uint8 array -> CHW float32 through the eval transform."""
    check_resized_size(image, transform, max_pixels, name)
    return np.ascontiguousarray(preprocess_eval(image, transform).transpose(2, 0, 1), dtype=np.float32)
