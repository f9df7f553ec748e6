"""Pillow's bicubic resize and affine transform of uint8 arrays, the same pixels, in native code.

The training pipeline's random resized crop (``Image.resize`` with a box) and RandAugment's
geometric ops (``Image.transform`` AFFINE, ``Image.rotate``, all bicubic) are its costliest Pillow
calls. :func:`resize` and :func:`affine` compute what the installed Pillow computes, bit for bit
(``tests/vitjax/test_resample.py`` checks them against Pillow on random images, boxes and
matrices), on packed ``[height, width, 3]`` (RGB) and ``[height, width]`` (L) uint8 arrays, with no conversion to and from
``PIL.Image``, and release the GIL while they run (thread workers overlap).

The C file (``pillow_exact.c``) is compiled on first use with the C compiler (``$CC``, else
``cc``/``gcc``) into ``$VITJAX_CACHE/kernels`` (:func:`vitjax.kernels.build.compile_cached`; about
a second, once per machine). Where that fails (no compiler, not Linux or macOS, an older Pillow
whose pixels differ), or with ``VITJAX_NATIVE_RESAMPLE=0``, both functions call Pillow itself:
the same pixels, slower. :func:`native_reason` says which and why.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vitjax.kernels.build import KernelUnavailable, compile_cached, compiler_command

SOURCE = Path(__file__).with_name("pillow_exact.c")
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC")
_U8 = ctypes.POINTER(ctypes.c_uint8)


def _cpu_identity() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (Linux), else the machine."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return platform.machine() + "|".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def build(cache_dir: Path | None = None) -> Path:
    """Compiles ``pillow_exact.c`` (once per cache, compiler and CPU); returns the library's path."""
    if sys.platform not in ("linux", "darwin"):
        raise KernelUnavailable(f"the native resampling is built on Linux and macOS only (this is {sys.platform})")
    compiler = compiler_command("CC", ("cc", "gcc"), hint=f"to build {SOURCE.name}")
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    return compile_cached(SOURCE, f"pillow_exact{suffix}", compiler, CFLAGS, (_cpu_identity(),), cache_dir)


def _load(path: Path) -> ctypes.CDLL:
    try:
        library = ctypes.CDLL(str(path))
    except OSError as e:
        raise KernelUnavailable(f"loading {path} failed ({e}); delete {path.parent} to rebuild") from None
    library.vitjax_resize_bicubic_u8.argtypes = [
        _U8, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_float),
        ctypes.c_int, ctypes.c_int, ctypes.c_int, _U8,
    ]  # fmt: skip
    library.vitjax_resize_bicubic_u8.restype = ctypes.c_int
    library.vitjax_resize_bicubic_batch_u8.argtypes = [
        _U8, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_float),
        ctypes.c_int, ctypes.c_int, ctypes.c_int, _U8,
    ]  # fmt: skip
    library.vitjax_resize_bicubic_batch_u8.restype = ctypes.c_int
    library.vitjax_affine_bicubic_u8.argtypes = [
        _U8, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_double), _U8,
        ctypes.c_int, ctypes.c_int, _U8,
    ]  # fmt: skip
    library.vitjax_affine_bicubic_u8.restype = None
    library.vitjax_mirror_rows_u8.argtypes = [_U8, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    library.vitjax_mirror_rows_u8.restype = None
    return library


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded library, or why there is none (a string)."""
    if os.environ.get("VITJAX_NATIVE_RESAMPLE", "1") == "0":
        return "VITJAX_NATIVE_RESAMPLE=0"
    try:
        library = _load(build())
    except KernelUnavailable as e:
        return str(e)
    mismatch = _differs_from_pillow(library)
    return mismatch or library


def native_library() -> ctypes.CDLL | None:
    """The built library, checked against Pillow (:mod:`vitjax.kernels.enhance` declares its other
    functions), or ``None`` (:func:`native_reason` says why)."""
    outcome = _library()
    return None if isinstance(outcome, str) else outcome


def native_reason() -> str | None:
    """``None`` where :func:`resize` and :func:`affine` run native code, else why they call Pillow."""
    outcome = _library()
    return outcome if isinstance(outcome, str) else None


def _pointer(array: np.ndarray):
    return array.ctypes.data_as(_U8)


def _as_pixels(image: np.ndarray, what: str) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and not 1 <= image.shape[2] <= 4):
        raise ValueError(
            f"{what} takes uint8 [height, width] or [height, width, 1-4] pixels, not {image.dtype} {image.shape}"
        )
    return np.ascontiguousarray(image)


_RULE_PROBE = ((26, 18), (16, 16), (2.0, 3.0, 16.0, 25.0))  # an image, size and box the two orders round apart


@functools.cache
def _vertical_first_rule(library: ctypes.CDLL) -> bool:
    """Whether the installed Pillow resizes vertically first when the height shrinks by more than
    twice the width (Pillow 13; earlier releases never did): the order whose pixels are Pillow's
    on one small resize (found once per process)."""
    (height, width), size, box = _RULE_PROBE
    image = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    pillow = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC, box=box))
    return bool(np.array_equal(_resize_with_rule(library, image, size, box, True), pillow))


def _resize_with_rule(library: ctypes.CDLL, pixels: np.ndarray, size: tuple[int, int], box, rule: bool) -> np.ndarray:
    out = np.empty((size[1], size[0], *pixels.shape[2:]), np.uint8)
    fbox = (ctypes.c_float * 4)(*box)
    status = library.vitjax_resize_bicubic_u8(
        _pointer(pixels),
        pixels.shape[0],
        pixels.shape[1],
        _channels(pixels),
        fbox,
        size[0],
        size[1],
        int(rule),
        _pointer(out),
    )
    if status != 0:
        raise MemoryError(f"resizing a {pixels.shape[1]}x{pixels.shape[0]} image to {size[0]}x{size[1]}: out of memory")
    return out


def _channels(pixels: np.ndarray) -> int:
    """Bands of ``[H, W]`` (1) or ``[H, W, C]`` pixels."""
    return pixels.shape[2] if pixels.ndim == 3 else 1


def _library_or_none(native: bool | None, channels: int) -> ctypes.CDLL | None:
    """The library where it runs images of ``channels`` bands (L or RGB: Pillow premultiplies LA and
    RGBA by their alpha)."""
    if native is False or channels not in (1, 3):
        return None
    return native_library()


def _fill_values(fill, channels: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(fill, np.uint8).reshape(-1), (channels,)).copy()


def _pillow_fill(fills: np.ndarray):
    return tuple(int(v) for v in fills) if len(fills) > 1 else int(fills[0])


def resize(
    image: np.ndarray, size: tuple[int, int], box=None, *, mirror: bool = False, native: bool | None = None
) -> np.ndarray:
    """``Image.resize(size, Image.BICUBIC, box=box)`` of a uint8 ``[H, W]`` or ``[H, W, C]`` array
    (``size`` is ``(width, height)``, ``box`` ``(left, top, right, bottom)`` floats, as Pillow's);
    the same pixels. ``mirror``: the result flipped left to right (``transpose(FLIP_LEFT_RIGHT)``),
    in place. ``native=False`` calls Pillow (``None``: native code where it built)."""
    pixels = _as_pixels(image, "resize")
    height, width = pixels.shape[:2]
    size = (int(size[0]), int(size[1]))
    box = (0.0, 0.0, float(width), float(height)) if box is None else tuple(float(v) for v in box)
    library = _library_or_none(native, _channels(pixels))
    if library is None:
        out = np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC, box=box))
        return np.ascontiguousarray(out[:, ::-1]) if mirror else out
    out = _resize_native(library, pixels, size, box)
    if mirror:
        library.vitjax_mirror_rows_u8(_pointer(out), out.shape[0], out.shape[1], _channels(out))
    return out


def _resize_native(
    library: ctypes.CDLL, pixels: np.ndarray, size: tuple[int, int], box: tuple[float, ...]
) -> np.ndarray:
    height, width = pixels.shape[:2]
    out_w, out_h = size
    if out_w < 1 or out_h < 1:
        raise ValueError(f"resize to {out_w}x{out_h}: width and height must be > 0")
    fbox = (ctypes.c_float * 4)(*box)  # Pillow reads the box as C floats
    left, top, right, bottom = fbox
    if left < 0 or top < 0:
        raise ValueError(f"box {box} of a {width}x{height} image: offset can't be negative")
    if right > width or bottom > height:
        raise ValueError(f"box {box} of a {width}x{height} image: box can't exceed the image")
    if right - left < 0 or bottom - top < 0:
        raise ValueError(f"box {box} of a {width}x{height} image: box can't be empty")
    if (out_w, out_h) == (width, height) and box == (0.0, 0.0, float(width), float(height)):
        return pixels.copy()
    if left == int(left) and top == int(top) and right - left == out_w and bottom - top == out_h:
        return pixels[int(top) : int(top) + out_h, int(left) : int(left) + out_w].copy()  # Pillow crops
    return _resize_with_rule(library, pixels, size, box, _vertical_first_rule(library))


def resize_batch(images: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """:func:`resize` of each uint8 ``[H, W, 3]`` or ``[H, W]`` image of a ``[B, ...]`` batch with
    its own box (``boxes``: ``[B, 4]`` integers, ``(left, top, right, bottom)`` inside the image), all
    to ``size``, in one native call; ``None`` where the library is not built (the caller resizes
    another way). A box of the output's size is Pillow's crop shortcut, copied here as Pillow crops."""
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        return None
    channels = images.shape[3] if images.ndim == 4 else 1
    library = _library_or_none(None, channels)
    if library is None:
        return None
    images = np.ascontiguousarray(images)
    batch, height, width = images.shape[:3]
    out_w, out_h = int(size[0]), int(size[1])
    boxes = np.asarray(boxes, np.int64).reshape(batch, 4)
    if (boxes[:, :2] < 0).any() or (boxes[:, 2] > width).any() or (boxes[:, 3] > height).any():
        raise ValueError(f"resize_batch: a box lies outside the {width}x{height} images")
    if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise ValueError("resize_batch: a box is empty")
    out = np.empty((batch, out_h, out_w, *images.shape[3:]), np.uint8)
    fboxes = np.ascontiguousarray(boxes, np.float32)
    status = library.vitjax_resize_bicubic_batch_u8(
        _pointer(images), batch, height, width, channels, fboxes.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        out_w, out_h, int(_vertical_first_rule(library)), _pointer(out),
    )  # fmt: skip
    if status != 0:
        raise MemoryError(f"resizing {batch} images of {width}x{height} to {out_w}x{out_h}: out of memory")
    crops = np.flatnonzero((boxes[:, 2] - boxes[:, 0] == out_w) & (boxes[:, 3] - boxes[:, 1] == out_h))
    for i in crops.tolist():
        left, top = int(boxes[i, 0]), int(boxes[i, 1])
        out[i] = images[i, top : top + out_h, left : left + out_w]
    return out


def affine(image: np.ndarray, matrix, fill=0, *, native: bool | None = None) -> np.ndarray:
    """``Image.transform(image.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=fill)``
    of a uint8 array: output pixel ``(x, y)`` is the input's bicubic sample at ``(a x' + b y' + c,
    d x' + e y' + f)`` with ``x' = x + 0.5``, ``y' = y + 0.5``; pixels mapped outside the image take
    ``fill`` (one value per channel, or one for all). The same pixels as Pillow."""
    pixels = _as_pixels(image, "affine")
    fills = _fill_values(fill, _channels(pixels))
    library = _library_or_none(native, len(fills))
    if library is None:
        pil = Image.fromarray(pixels)
        return np.asarray(
            pil.transform(pil.size, Image.AFFINE, tuple(matrix), Image.BICUBIC, fillcolor=_pillow_fill(fills))
        )
    return _affine_native(library, pixels, matrix, fills)


def _affine_native(library: ctypes.CDLL, pixels: np.ndarray, matrix, fills: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    coefficients = (ctypes.c_double * 6)(*(float(v) for v in tuple(matrix)[:6]))
    out = np.empty_like(pixels)
    library.vitjax_affine_bicubic_u8(
        _pointer(pixels), height, width, len(fills), coefficients, _pointer(fills), width, height, _pointer(out)
    )
    return out


def rotate_matrix(width: int, height: int, angle: float) -> tuple[float, ...] | None:
    """The affine matrix ``Image.rotate(angle)`` (about the centre, no expand) samples with,
    computed in the same floating-point steps; ``None`` where Pillow copies or transposes instead
    (angles of 0, 180, or 90/270 on a square image)."""
    angle = angle % 360.0
    if angle == 0 or angle == 180 or (angle in (90, 270) and width == height):
        return None
    cx, cy = width / 2, height / 2
    theta = -math.radians(angle)
    a, b, d, e = (
        round(math.cos(theta), 15),
        round(math.sin(theta), 15),
        round(-math.sin(theta), 15),
        round(math.cos(theta), 15),
    )
    c = a * (-cx - 0) + b * (-cy - 0) + 0.0
    f = d * (-cx - 0) + e * (-cy - 0) + 0.0
    return a, b, c + cx, d, e, f + cy


def rotate(image: np.ndarray, angle: float, fill=0, *, native: bool | None = None) -> np.ndarray:
    """``Image.rotate(angle, resample=Image.BICUBIC, fillcolor=fill)`` of a uint8 array (degrees,
    counter-clockwise, about the centre, same size): the same pixels as Pillow."""
    pixels = _as_pixels(image, "rotate")
    matrix = rotate_matrix(pixels.shape[1], pixels.shape[0], angle)
    if matrix is None or _library_or_none(native, _channels(pixels)) is None:
        fills = _fill_values(fill, _channels(pixels))
        return np.asarray(Image.fromarray(pixels).rotate(angle, resample=Image.BICUBIC, fillcolor=_pillow_fill(fills)))
    return affine(pixels, matrix, fill, native=native)


def _differs_from_pillow(library: ctypes.CDLL) -> str | None:
    """Why the built library's pixels are not Pillow's on a few checks (a Pillow whose arithmetic
    changed), or ``None``: run once per process before the library is used."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    fills = np.array([124, 116, 104], np.uint8)
    checks = [
        ("resize", _resize_native(library, image, (16, 20), (1.5, 2.0, 27.0, 35.0)), resize(image, (16, 20), (1.5, 2.0, 27.0, 35.0), native=False)),
        ("resize", _resize_native(library, image, (40, 11), (0.0, 0.0, 29.0, 37.0)), resize(image, (40, 11), native=False)),
        ("affine", _affine_native(library, image, (0.9, 0.2, -1.5, -0.1, 1.1, 2.25), fills), affine(image, (0.9, 0.2, -1.5, -0.1, 1.1, 2.25), fills, native=False)),
    ]  # fmt: skip
    for name, ours, pillow in checks:
        if not np.array_equal(ours, pillow):
            return f"the native {name} differs from Pillow {Image.__version__}'s pixels; using Pillow"
    return None
