"""Pillow's point and blend operations of RandAugment on uint8 arrays: the same pixels, in native code.

RandAugment's colour ops are Pillow calls on small images: ``ImageOps.autocontrast``,
``equalize``, ``invert``, ``posterize``, ``solarize`` (lookup tables built from the image's
histogram) and ``ImageEnhance``'s ``Color``, ``Contrast``, ``Brightness`` and ``Sharpness``
(``Image.blend`` of the image with a "degenerate" one: its gray version, its mean gray, black, its
smoothed version). With the pixels in numpy arrays, each call also pays ``Image.fromarray`` and
``np.asarray`` around it, which cost as much as the operation. These functions compute what
Pillow computes, bit for bit (``tests/vitjax/test_enhance.py`` checks them against Pillow and
against timm's RandAugment ops), on ``[height, width, 3]`` (RGB) and ``[height, width]`` (L) uint8
arrays, in the C file of :mod:`vitjax.kernels.resample` (``pillow_exact.c``), with the GIL released.

The lookup tables are computed here as Pillow's Python code computes them (the same integer and
double-precision arithmetic); the blends are Pillow's C arithmetic in single precision. Where the
library is not built (see :func:`vitjax.kernels.resample.native_reason`), where its results differ
from the installed Pillow's on a first check, for other image modes, or with ``native=False``,
each function calls Pillow itself: the same pixels, slower. :func:`native_reason` says why.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from vitjax.kernels import resample

_U8 = ctypes.POINTER(ctypes.c_uint8)


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    size, c_int = ctypes.c_size_t, ctypes.c_int
    library.vitjax_lut_u8.argtypes = [_U8, size, c_int, _U8, _U8]
    library.vitjax_histogram_u8.argtypes = [_U8, size, c_int, ctypes.POINTER(ctypes.c_int64)]
    library.vitjax_gray_u8.argtypes = [_U8, size, c_int, _U8]
    library.vitjax_blend_u8.argtypes = [_U8, size, _U8, size, ctypes.c_float, _U8]
    library.vitjax_smooth_u8.argtypes = [_U8, c_int, c_int, c_int, _U8]
    for name in ("vitjax_lut_u8", "vitjax_histogram_u8", "vitjax_gray_u8", "vitjax_blend_u8", "vitjax_smooth_u8"):
        getattr(library, name).restype = None
    return library


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The library with the operations declared and checked against Pillow, or why not (a string)."""
    library = resample.native_library()
    if library is None:
        return resample.native_reason() or "the native library is not built"
    library = _declare(library)
    return _differs_from_pillow(library) or library


def native_reason() -> str | None:
    """``None`` where these operations run native code, else why they call Pillow."""
    outcome = _library()
    return outcome if isinstance(outcome, str) else None


def _pixels(image: np.ndarray, what: str) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"{what} takes uint8 [height, width] or [height, width, channels] pixels, not {image.dtype} {image.shape}"
        )
    return np.ascontiguousarray(image)


def _native(pixels: np.ndarray, native: bool | None) -> ctypes.CDLL | None:
    """The library where it runs ``pixels`` (L or RGB), else ``None`` (Pillow runs them)."""
    if native is False or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        return None
    outcome = _library()
    return None if isinstance(outcome, str) else outcome


def _pointer(array: np.ndarray):
    return array.ctypes.data_as(_U8)


def _bands(pixels: np.ndarray) -> int:
    return 1 if pixels.ndim == 2 else pixels.shape[2]


def _with_pillow(pixels: np.ndarray, operation: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.asarray(operation(Image.fromarray(pixels)))


# --- lookup tables ------------------------------------------------------------------------------

_VALUES = np.arange(256, dtype=np.int64)


def _tables(table, bands: int) -> np.ndarray:
    """256 entries per band, uint8, clipped to 0..255 as Pillow clips them (256 given: for all bands)."""
    tables = np.clip(np.asarray(table, np.int64).reshape(-1), 0, 255).astype(np.uint8)
    if tables.size == 256:
        tables = np.tile(tables, bands)
    if tables.size != 256 * bands:
        raise ValueError(f"apply_lut: {tables.size} table entries for {bands} band(s); give 256 or {256 * bands}")
    return tables


def _lut(library: ctypes.CDLL, pixels: np.ndarray, table) -> np.ndarray:
    bands = _bands(pixels)
    tables = _tables(table, bands)
    out = np.empty_like(pixels)
    library.vitjax_lut_u8(_pointer(pixels), pixels.size // bands, bands, _pointer(tables), _pointer(out))
    return out


def _histogram(library: ctypes.CDLL, pixels: np.ndarray) -> np.ndarray:
    bands = _bands(pixels)
    counts = np.empty((bands, 256), np.int64)
    library.vitjax_histogram_u8(
        _pointer(pixels), pixels.size // bands, bands, counts.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
    )
    return counts


def apply_lut(image: np.ndarray, table, *, native: bool | None = None) -> np.ndarray:
    """``Image.point(table)``: each band's values through its 256-entry table (``table``: 256
    values for all bands, or 256 per band; clipped to 0..255 as Pillow clips them)."""
    pixels = _pixels(image, "apply_lut")
    library = _native(pixels, native)
    if library is None:
        tables = _tables(table, _bands(pixels))
        return _with_pillow(pixels, lambda im: im.point(tables.tolist()))
    return _lut(library, pixels, table)


def histogram(image: np.ndarray, *, native: bool | None = None) -> np.ndarray:
    """``Image.histogram()`` as ``[bands, 256]`` int64 counts."""
    pixels = _pixels(image, "histogram")
    library = _native(pixels, native)
    if library is None:
        return np.asarray(Image.fromarray(pixels).histogram(), np.int64).reshape(_bands(pixels), 256)
    return _histogram(library, pixels)


def autocontrast_table(counts: np.ndarray) -> np.ndarray:
    """``ImageOps.autocontrast``'s table (no cutoff, nothing ignored) for each band's histogram
    (``[bands, 256]``): the darkest value present to 0, the lightest to 255, in between
    ``int(v * scale + offset)`` in double precision; a band of one value unchanged."""
    tables = np.tile(_VALUES, (len(counts), 1))
    for band, h in enumerate(counts):
        present = np.flatnonzero(h)
        if present.size and present[-1] > present[0]:
            lo, hi = int(present[0]), int(present[-1])
            scale = 255.0 / (hi - lo)
            offset = -lo * scale
            tables[band] = np.clip(np.trunc(_VALUES * scale + offset), 0, 255)
    return tables


def equalize_table(counts: np.ndarray) -> np.ndarray:
    """``ImageOps.equalize``'s table for each band's histogram (``[bands, 256]``), in integers: the
    values spread by their cumulative counts in steps of (all but the lightest value's count) //
    255; unchanged where a band has one value or the step is 0."""
    tables = np.tile(_VALUES, (len(counts), 1))
    for band, h in enumerate(counts):
        present = h[h > 0]
        if present.size <= 1:
            continue
        step = int(present.sum() - present[-1]) // 255
        if step:
            before = np.concatenate(([0], np.cumsum(h)[:-1]))
            tables[band] = (step // 2 + before) // step
    return tables


def _point_op(
    name: str, pillow: Callable[[Image.Image], Image.Image], table: Callable[[ctypes.CDLL, np.ndarray], np.ndarray]
) -> Callable[..., np.ndarray]:
    def operation(image: np.ndarray, *, native: bool | None = None) -> np.ndarray:
        pixels = _pixels(image, name)
        library = _native(pixels, native)
        if library is None:
            return _with_pillow(pixels, pillow)
        return _lut(library, pixels, table(library, pixels))

    operation.__name__ = operation.__qualname__ = name
    return operation


autocontrast = _point_op(
    "autocontrast", ImageOps.autocontrast, lambda library, pixels: autocontrast_table(_histogram(library, pixels))
)
autocontrast.__doc__ = "``ImageOps.autocontrast(image)``."
equalize = _point_op("equalize", ImageOps.equalize, lambda library, pixels: equalize_table(_histogram(library, pixels)))
equalize.__doc__ = "``ImageOps.equalize(image)``."
invert = _point_op("invert", ImageOps.invert, lambda library, pixels: 255 - _VALUES)
invert.__doc__ = "``ImageOps.invert(image)``: 255 - v."


def posterize(image: np.ndarray, bits: int, *, native: bool | None = None) -> np.ndarray:
    """``ImageOps.posterize(image, bits)``: the ``bits`` (1 to 8) highest bits of each value kept."""
    if not 1 <= bits <= 8:
        raise ValueError(f"posterize keeps 1 to 8 bits, not {bits}")
    return apply_lut(image, _VALUES & ~((1 << (8 - bits)) - 1), native=native)


def solarize(image: np.ndarray, threshold: int = 128, *, native: bool | None = None) -> np.ndarray:
    """``ImageOps.solarize(image, threshold)``: values at or above ``threshold`` inverted."""
    return apply_lut(image, np.where(_VALUES < threshold, _VALUES, 255 - _VALUES), native=native)


# --- ImageEnhance: blends with a degenerate image ------------------------------------------------


def _blend(library: ctypes.CDLL, degenerate: np.ndarray, pixels: np.ndarray, factor: float) -> np.ndarray:
    """``Image.blend(degenerate, image, factor)``; ``degenerate`` of one value stands for an image of it."""
    out = np.empty_like(pixels)
    library.vitjax_blend_u8(
        _pointer(degenerate), degenerate.size, _pointer(pixels), pixels.size, float(factor), _pointer(out)
    )
    return out


def _gray(library: ctypes.CDLL, pixels: np.ndarray, bands: int) -> np.ndarray:
    """``convert("L")`` of RGB pixels, written to ``bands`` bands (1: L; 3: ``convert("L").convert("RGB")``)."""
    gray = np.empty((*pixels.shape[:2], bands) if bands > 1 else pixels.shape[:2], np.uint8)
    library.vitjax_gray_u8(_pointer(pixels), pixels.shape[0] * pixels.shape[1], bands, _pointer(gray))
    return gray


def _color(library: ctypes.CDLL, pixels: np.ndarray, factor: float) -> np.ndarray:
    degenerate = pixels if pixels.ndim == 2 else _gray(library, pixels, 3)  # an L image is its own gray
    return _blend(library, degenerate, pixels, factor)


def _contrast(library: ctypes.CDLL, pixels: np.ndarray, factor: float) -> np.ndarray:
    """Blended with ``int(ImageStat.Stat(image.convert("L")).mean[0] + 0.5)``: the gray values' sum
    over their count, divided as Python divides integers (correctly rounded)."""
    gray = pixels if pixels.ndim == 2 else _gray(library, pixels, 1)
    counts = _histogram(library, gray)[0]
    total, count = int(counts @ _VALUES), int(counts.sum())
    mean = int(total / count + 0.5) if count else 0
    return _blend(library, np.full(1, mean, np.uint8), pixels, factor)


def _brightness(library: ctypes.CDLL, pixels: np.ndarray, factor: float) -> np.ndarray:
    return _blend(library, np.zeros(1, np.uint8), pixels, factor)


def _smooth(library: ctypes.CDLL, pixels: np.ndarray) -> np.ndarray:
    out = np.empty_like(pixels)
    library.vitjax_smooth_u8(_pointer(pixels), pixels.shape[0], pixels.shape[1], _bands(pixels), _pointer(out))
    return out


def _sharpness(library: ctypes.CDLL, pixels: np.ndarray, factor: float) -> np.ndarray:
    return _blend(library, _smooth(library, pixels), pixels, factor)


def _enhance_op(
    name: str, pillow: type[ImageEnhance._Enhance], native_op: Callable[[ctypes.CDLL, np.ndarray, float], np.ndarray]
) -> Callable[..., np.ndarray]:
    def operation(image: np.ndarray, factor: float, *, native: bool | None = None) -> np.ndarray:
        pixels = _pixels(image, name)
        library = _native(pixels, native)
        if library is None:
            return _with_pillow(pixels, lambda im: pillow(im).enhance(factor))
        return native_op(library, pixels, factor)

    operation.__name__ = operation.__qualname__ = name
    return operation


color = _enhance_op("color", ImageEnhance.Color, _color)
color.__doc__ = "``ImageEnhance.Color(image).enhance(factor)``: 0 gives the image's gray, 1 the image."
contrast = _enhance_op("contrast", ImageEnhance.Contrast, _contrast)
contrast.__doc__ = "``ImageEnhance.Contrast(image).enhance(factor)``: 0 gives the image's mean gray, 1 the image."
brightness = _enhance_op("brightness", ImageEnhance.Brightness, _brightness)
brightness.__doc__ = "``ImageEnhance.Brightness(image).enhance(factor)``: 0 gives black, 1 the image."
sharpness = _enhance_op("sharpness", ImageEnhance.Sharpness, _sharpness)
sharpness.__doc__ = (
    "``ImageEnhance.Sharpness(image).enhance(factor)``: 0 gives ``image.filter(ImageFilter.SMOOTH)``, "
    "1 the image, 2 a sharpened one."
)


def smooth(image: np.ndarray, *, native: bool | None = None) -> np.ndarray:
    """``image.filter(ImageFilter.SMOOTH)``."""
    pixels = _pixels(image, "smooth")
    library = _native(pixels, native)
    if library is None:
        return _with_pillow(pixels, lambda im: im.filter(ImageFilter.SMOOTH))
    return _smooth(library, pixels)


def _differs_from_pillow(library: ctypes.CDLL) -> str | None:
    """Why the library's operations do not give the installed Pillow's pixels on a few checks, or
    ``None``: run once per process before they are used."""
    image = np.random.default_rng(1).integers(0, 256, (13, 11, 3), dtype=np.uint8)
    checks = [
        ("equalize", lambda pixels: _lut(library, pixels, equalize_table(_histogram(library, pixels))), ImageOps.equalize),
        ("autocontrast", lambda pixels: _lut(library, pixels, autocontrast_table(_histogram(library, pixels))), ImageOps.autocontrast),
        ("color", lambda pixels: _color(library, pixels, 1.73), lambda im: ImageEnhance.Color(im).enhance(1.73)),
        ("contrast", lambda pixels: _contrast(library, pixels, 0.37), lambda im: ImageEnhance.Contrast(im).enhance(0.37)),
        ("sharpness", lambda pixels: _sharpness(library, pixels, 1.61), lambda im: ImageEnhance.Sharpness(im).enhance(1.61)),
    ]  # fmt: skip
    for name, ours, pillow in checks:
        for pixels in (image, image // 2 + 40):
            if not np.array_equal(ours(pixels), _with_pillow(pixels, pillow)):
                return f"the native {name} differs from Pillow {Image.__version__}'s pixels; using Pillow"
    return None
