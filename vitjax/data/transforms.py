"""PaddleClas's eval preprocessing, step for step.

``ResizeImage(resize_short)`` with the PIL backend, ``CropImage`` and
``NormalizeImage``: the short side is scaled to ``resize_short`` (each side rounded
with Python's ``round``), the center ``crop_size`` square is cut (extra pixel to the
right/bottom), and pixels are normalized in float32 as ``(x * float32(1/255) - mean) / std``.
Output is an HWC float32 array (our models take NHWC).

Decoding (:func:`load_rgb`, :func:`open_image`): Pillow, or OpenCV for the JPEGs where it gives
Pillow's pixels exactly; :class:`EncodedImage` is a file read but not decoded, which the training
transform decodes at the reduced scale its random crop allows (``docs/performance.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitjax.data import jpeg_header
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


DECODERS = ("auto", "pillow", "opencv")
REDUCTIONS = (1, 2, 4, 8)  # libjpeg's DCT scaling: 1/1, 1/2, 1/4, 1/8 of each side

# PIL.Image.transpose methods of EXIF orientations 2-8, as ImageOps.exif_transpose applies them,
# restated on numpy arrays (tested equal).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def _orientation(image: Image.Image) -> int:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF, as in to_rgb
        return 1
    return orientation if orientation in range(2, 9) else 1


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """An image file read but not decoded: its bytes and what its header says.

    ``width`` x ``height`` is the size :meth:`decode` gives (after EXIF orientation), known
    before decoding, so a random crop can be drawn first and the file then decoded at the
    smallest scale the crop allows (:meth:`decode` with ``reduce``). ``shape`` is that of the
    decoded array. Made by :func:`open_image`; cheap to keep (the compressed bytes).
    """

    data: bytes = dataclasses.field(repr=False)
    name: str
    width: int
    height: int
    format: str  # Pillow's name for it: "JPEG", "PNG", ...
    mode: str  # Pillow's mode of the stored pixels
    orientation: int  # EXIF orientation, 1 (none) to 8

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, 3

    @property
    def reducible(self) -> bool:
        """Whether :meth:`decode` can scale it down while decoding (JPEG's DCT scaling)."""
        return self.format == "JPEG"

    def reduced_size(self, reduce: int) -> tuple[int, int]:
        """The (width, height) :meth:`decode` gives with ``reduce``: each side divided, rounded up."""
        return -(-self.width // reduce), -(-self.height // reduce)

    def decode(self, reduce: int = 1, decoder: str = "auto") -> np.ndarray:
        """RGB HWC uint8, as :func:`load_rgb` decodes the file; ``reduce`` 2, 4 or 8 decodes a
        JPEG at that fraction of each side (libjpeg's DCT scaling, through Pillow's ``draft`` or
        OpenCV's ``IMREAD_REDUCED_*``, which give the same pixels). Raises :class:`ImageError`."""
        if reduce not in REDUCTIONS or (reduce > 1 and not self.reducible):
            raise ValueError(f"{self.name}: cannot decode a {self.format} image at 1/{reduce} scale")
        check_decoder(decoder)
        try:
            return _decode(self, reduce, decoder)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"{self.name}: cannot decode image ({e})") from None


def open_image(path: str | os.PathLike) -> EncodedImage:
    """Reads an image file and its header (not its pixels); a clear :class:`ImageError` names
    a missing, unreadable or unsupported file, or a decompression bomb (Pillow's limits)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
            plain = jpeg_header.read(head)  # a plain JPEG's header, read as Pillow reads it, without Pillow
            if plain is not None:
                return _plain_jpeg(head + f.read(), str(path), plain)
            f.seek(0)
            header = _header(f, str(path))  # first: a file that is no image is not read whole
            f.seek(0)
            data = f.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from None
    return EncodedImage(data, str(path), *header)


def encoded_image(data: bytes, name: str) -> EncodedImage:
    """:func:`open_image` of bytes already read; ``name`` is what errors call them."""
    plain = jpeg_header.read(data[:_HEADER_BYTES])
    if plain is None:
        return EncodedImage(data, name, *_header(io.BytesIO(data), name))
    return _plain_jpeg(data, name, plain)


_HEADER_BYTES = 1 << 16  # where jpeg_header looks for a JPEG's header (past it: Pillow reads the file)


def _plain_jpeg(data: bytes, name: str, plain: tuple[int, int, str, int]) -> EncodedImage:
    """The :class:`EncodedImage` of a JPEG whose header :func:`jpeg_header.read` read, as
    :func:`_header` would have made it."""
    width, height, mode, orientation = plain
    orientation = orientation if orientation in range(2, 9) else 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return EncodedImage(data, name, width, height, "JPEG", mode, orientation)


def _header(file, name: str) -> tuple[int, int, str, str, int]:
    """(width, height as decoded, format, mode, EXIF orientation) from an image file's header."""
    try:
        with Image.open(file) as image:  # a decompression bomb: a warning, or an error past 2x
            orientation = _orientation(image)
            width, height = image.size
            stored_format, mode = image.format or "", image.mode
    except UnidentifiedImageError:  # Pillow names the file object it was given; name the file
        raise ImageError(f"{name}: cannot decode image (cannot identify image file {name!r})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: cannot decode image ({e})") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height, stored_format, mode, orientation


def load_rgb(path: str | os.PathLike, decoder: str = "auto") -> np.ndarray:
    """Decodes an image file to an RGB HWC uint8 array (see :func:`to_rgb`); a clear error names a bad file.

    ``decoder="auto"`` decodes 8-bit RGB/gray JPEGs with OpenCV where it is installed and gives
    Pillow's pixels exactly (checked once per process; both use libjpeg-turbo), 1.3x faster on
    500x375 photos;
    everything else, and every JPEG without OpenCV, with Pillow. ``"pillow"`` always uses Pillow;
    ``"opencv"`` insists on OpenCV for those JPEGs (an error where it is missing or differs)."""
    return open_image(path).decode(decoder=decoder)


def check_decoder(decoder: str) -> str:
    """``decoder`` if it is one of :data:`DECODERS` (and, for ``"opencv"``, usable), else ValueError."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
    if decoder == "opencv" and _opencv_like_pillow() is None:
        raise ValueError(
            "decoder 'opencv' needs OpenCV, decoding JPEGs to Pillow's pixels (pip install opencv-python-headless)"
        )
    return decoder


def _decode(encoded: EncodedImage, reduce: int, decoder: str) -> np.ndarray:
    if decoder != "pillow" and encoded.format == "JPEG" and encoded.mode in ("RGB", "L"):
        cv2 = _opencv_like_pillow()
        if cv2 is not None:
            pixels = _decode_opencv(cv2, encoded.data, reduce)
            stored = encoded.reduced_size(reduce)
            if encoded.orientation in (5, 6, 7, 8):
                stored = stored[::-1]
            if pixels is not None and pixels.shape == (stored[1], stored[0], 3):
                if encoded.orientation != 1:
                    pixels = np.ascontiguousarray(_ORIENT[encoded.orientation](pixels))
                return pixels
            # OpenCV refused it (a truncated file, ...): Pillow decodes it or names the error
    return _decode_pillow(encoded.data, reduce)


def _decode_pillow(data: bytes, reduce: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # open_image warned already
        with Image.open(io.BytesIO(data)) as image:
            if reduce > 1:
                width, height = image.size
                image.draft(image.mode, (width // reduce, height // reduce))  # picks exactly 1/reduce
            return to_rgb(image)


def _decode_opencv(cv2, data: bytes, reduce: int) -> np.ndarray | None:
    """OpenCV's RGB decoding of a JPEG's stored pixels (no EXIF orientation), or None."""
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
        reduce, cv2.IMREAD_REDUCED_COLOR_8
    )
    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.11: libjpeg writes RGB, no conversion pass
    if rgb is not None:
        flag = (flag & ~cv2.IMREAD_COLOR) | rgb
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        return None
    return pixels if rgb is not None else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


@functools.cache
def _opencv_like_pillow():
    """The ``cv2`` module if it is importable, decodes JPEGs to Pillow's pixels exactly (every
    subsampling and scale, on a small photo-like probe encoded here) and refuses one cut short,
    else None."""
    try:
        import cv2
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:45, 0:61]
    probe = np.stack([x * 4, y * 5, (x + y) * 2], -1) + rng.integers(0, 40, (45, 61, 3))
    probe = Image.fromarray(probe.clip(0, 255).astype(np.uint8))
    for options in (dict(subsampling=0), dict(subsampling=1), dict(subsampling=2, progressive=True)):
        buffer = io.BytesIO()
        probe.save(buffer, "JPEG", quality=80, **options)
        for reduce in REDUCTIONS:
            ours = _decode_opencv(cv2, buffer.getvalue(), reduce)
            if ours is None or not np.array_equal(ours, _decode_pillow(buffer.getvalue(), reduce)):
                warnings.warn(
                    f"OpenCV {cv2.__version__} decodes JPEGs differently from Pillow here: decoding with Pillow",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return None
    # A file cut short must be refused, not filled in (OpenCV 4's libjpeg only warns and returns
    # the image with a grey tail): a truncated training image is a bad image, not a picture.
    cut = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    if _decode_opencv(cv2, cut, 1) is not None:
        warnings.warn(
            f"OpenCV {cv2.__version__} decodes a truncated JPEG without an error: decoding with Pillow",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return cv2


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
    """``(x * float32(1/255) - mean) / std`` in float32, per channel (the last axis).

    A uint8 image is looked up in a table of that formula's 256 values per channel instead
    (OpenCV's ``LUT``, or numpy's ``take`` without OpenCV): the same float32 values, bit for
    bit (tested), about ten times cheaper than the arithmetic on a 224 x 224 image."""
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if image.dtype != np.uint8 or image.ndim < 2 or mean32.ndim > 1 or std32.ndim > 1:
        return _normalize_arithmetic(image, mean32, std32)
    channels = image.shape[-1]
    if mean32.size not in (1, channels) or std32.size not in (1, channels):
        return _normalize_arithmetic(image, mean32, std32)  # numpy's broadcasting error, or its result
    table = _normalize_table(
        tuple(mean32.reshape(-1).tolist()), tuple(std32.reshape(-1).tolist()), channels
    )  # [256, C]
    cv2 = _opencv()
    if cv2 is not None and image.ndim in (3, 4) and channels <= 4:
        # OpenCV runs a LUT of 2**18 pixels or more on several threads: one image at a time keeps it on this one.
        lut = table[None]  # [1, 256, C]: a C-channel table for a C-channel image
        if image.ndim == 3:
            return _lut(cv2, image, lut)
        out = np.empty(image.shape, np.float32)
        for i, single in enumerate(image):
            out[i] = _lut(cv2, single, lut)
        return out
    out = np.empty(image.shape, np.float32)
    for c in range(channels):
        out[..., c] = table[:, c].take(image[..., c])
    return out


def _normalize_arithmetic(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) * np.float32(1.0 / 255.0) - mean) / std


def normalize_table(mean, std, channels: int = 3) -> np.ndarray:
    """:func:`normalize`'s float32 value of each uint8 level per channel, ``[256, channels]``
    (read-only, shared). ``table[x, arange(C)]`` normalises a uint8 image with the host's very
    bits, wherever it is looked up (a compiled ``(x / 255 - mean) / std`` may round differently:
    XLA's does, by one unit in the last place for about a third of the levels here; the training
    step keeps that formula, ``steps.normalize_on_device``, which was cheaper on a CPU)."""
    mean32, std32 = np.asarray(mean, np.float32).reshape(-1), np.asarray(std, np.float32).reshape(-1)
    return _normalize_table(tuple(mean32.tolist()), tuple(std32.tolist()), channels)


@functools.lru_cache(maxsize=64)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> np.ndarray:
    """:func:`normalize_table`, computed by the formula itself, once per mean, std and channels."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], channels, axis=1)
    table = np.ascontiguousarray(
        _normalize_arithmetic(levels, np.asarray(mean, np.float32), np.asarray(std, np.float32))
    )
    table.flags.writeable = False
    return table


def _lut(cv2, image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    if image.shape[-1] == 1:  # OpenCV sees an [H, W, 1] array as [H, W]
        return cv2.LUT(np.ascontiguousarray(image[..., 0]), lut)[..., None]
    return cv2.LUT(np.ascontiguousarray(image), lut)


@functools.cache
def _opencv():
    """The ``cv2`` module, or None where OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def preprocess_eval(image: np.ndarray, transform: EvalTransform) -> np.ndarray:
    """RGB HWC uint8 image -> the model's HWC float32 input, as PaddleClas's eval does."""
    image = resize_short(image, transform.resize_short, transform.interpolation)
    image = center_crop(image, transform.crop_size)
    return normalize(image, transform.mean, transform.std)
