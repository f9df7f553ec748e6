"""Training-time augmentation on single images (PIL + numpy), as the DeiT recipe uses it.

Every function takes a ``numpy.random.Generator`` so that the augmentation of an
example depends only on (seed, position in the data stream): a resumed run sees
exactly the images an uninterrupted run would have seen.

Mixup/CutMix act on whole batches and live in :mod:`vitjax.training.train` (on device).

The transforms take a decoded array or an :class:`~vitjax.data.transforms.EncodedImage` (a
file read, not decoded: ``sources.EncodedSource``). Given the latter, the crop is drawn from
the header's size, with the same draws, and a JPEG is decoded at 1/2, 1/4 or 1/8 scale when
the crop box covers 2, 4 or 8 times the output size in both dimensions (:func:`decode_reduction`),
the box scaled to match: the same crops, pixels a little different (DCT scaling before the
bicubic resize), decoding several times cheaper on large photos.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from vitjax.data.transforms import _PIL_RESAMPLE, REDUCTIONS, EncodedImage, normalize
from vitjax.kernels import enhance, resample

_FILL = (124, 116, 104)  # ImageNet mean pixel, for areas uncovered by geometric ops


def random_resized_crop(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    interpolation="bicubic",
) -> Image.Image:
    """A crop of random area (``scale`` of the image) and aspect ratio, resized to ``size``."""
    box = crop_box(image.size[0], image.size[1], rng, scale, ratio)
    return image.resize((size, size), _PIL_RESAMPLE[interpolation], box=box)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A draw uniform on ``[low, high)``: ``rng.uniform(low, high)``'s formula, a quarter of its
    cost per scalar (no argument parsing), and rounded the same on every platform. The caller
    checks the range once (:func:`_check_range`), as ``uniform`` would on every call."""
    return low + (high - low) * rng.random()


def _check_range(name: str, bounds) -> None:
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"{name} {tuple(bounds)}: need finite bounds with 0 < low <= high")


def crop_box(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """:func:`random_resized_crop`'s box ``(left, top, right, bottom)``, drawn from ``rng``."""
    _check_range("augment.crop_scale", scale)
    _check_range("crop aspect ratio", ratio)
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(rng, *scale)
        aspect = math.exp(_uniform(rng, *log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height  # fall back to the whole image


def decode_reduction(image: EncodedImage, box, size: int, max_reduce: int = 8) -> int:
    """The largest of 1, 2, 4, 8 (at most ``max_reduce``) by which ``image`` can be decoded with
    ``box`` (``(left, top, right, bottom)`` at full size), scaled down by it, still at least ``size``
    pixels wide and high: a crop at least 2x (4x, 8x) the output in both dimensions. 1 for what
    cannot be decoded reduced (not a JPEG)."""
    if not image.reducible:
        return 1
    width, height = box[2] - box[0], box[3] - box[1]
    return max(k for k in REDUCTIONS if k <= max(1, max_reduce) and (k == 1 or min(width, height) >= k * size))


def resized_crop(
    image: np.ndarray | EncodedImage,
    box,
    size: int,
    interpolation: str = "bicubic",
    max_reduce: int = 8,
    decoder: str = "auto",
    *,
    mirror: bool = False,
) -> np.ndarray:
    """``box`` of ``image`` resized to ``size`` x ``size`` (uint8 pixels), flipped left to right with
    ``mirror``. An :class:`EncodedImage` is decoded at the scale :func:`decode_reduction` allows,
    and the box scaled down with it."""
    if isinstance(image, EncodedImage):
        reduce = decode_reduction(image, box, size, max_reduce)
        pixels = image.decode(reduce, decoder)
        if reduce > 1:
            box = tuple(v / reduce for v in box)
        image = pixels
    return resize_box(image, box, size, interpolation, mirror=mirror)


def resize_box(
    pixels: np.ndarray, box, size: int, interpolation: str = "bicubic", *, mirror: bool = False
) -> np.ndarray:
    """``Image.resize((size, size), interpolation, box=box)`` of a uint8 array (``box`` ``None``:
    the whole image), flipped left to right with ``mirror``: bicubic runs
    :func:`vitjax.kernels.resample.resize`, Pillow's pixels without Pillow's conversions (the flip
    in place, in native code), the other filters Pillow itself."""
    if interpolation == "bicubic":
        return resample.resize(pixels, (size, size), box, mirror=mirror)
    box = None if box is None else tuple(box)
    out = np.asarray(Image.fromarray(pixels).resize((size, size), _PIL_RESAMPLE[interpolation], box=box))
    return np.ascontiguousarray(out[:, ::-1]) if mirror else out


# --- RandAugment ("rand-m9-mstd0.5-inc1": 2 ops, magnitude ~ N(9, 0.5), increasing ops) ---
# timm's op set (timm.data.auto_augment), the same Pillow operations on uint8 arrays: the geometric
# ops through vitjax.kernels.resample, the colour ops through vitjax.kernels.enhance (native code,
# Pillow's pixels, no PIL.Image in between).

_MAX_LEVEL = 10.0


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(pixels: np.ndarray, matrix) -> np.ndarray:
    return resample.affine(pixels, matrix, _FILL)


def _rotate(pixels, level, rng):
    return resample.rotate(pixels, _signed(level / _MAX_LEVEL * 30.0, rng), _FILL)


def _shear_x(pixels, level, rng):
    return _affine(pixels, (1, _signed(level / _MAX_LEVEL * 0.3, rng), 0, 0, 1, 0))


def _shear_y(pixels, level, rng):
    return _affine(pixels, (1, 0, 0, _signed(level / _MAX_LEVEL * 0.3, rng), 1, 0))


def _translate_x(pixels, level, rng):
    return _affine(pixels, (1, 0, _signed(level / _MAX_LEVEL * 0.45, rng) * pixels.shape[1], 0, 1, 0))


def _translate_y(pixels, level, rng):
    return _affine(pixels, (1, 0, 0, 0, 1, _signed(level / _MAX_LEVEL * 0.45, rng) * pixels.shape[0]))


def _enhancer(operation):
    def apply(pixels, level, rng):
        return operation(pixels, 1.0 + _signed(level / _MAX_LEVEL * 0.9, rng))

    return apply


def _posterize(pixels, level, rng):
    return enhance.posterize(pixels, max(1, 4 - int(level / _MAX_LEVEL * 4)))


def _solarize(pixels, level, rng):
    return enhance.solarize(pixels, 256 - int(level / _MAX_LEVEL * 256))


_VALUES = np.arange(256)


def _solarize_add(pixels, level, rng):
    add = int(level / _MAX_LEVEL * 110)
    return enhance.apply_lut(pixels, np.where(_VALUES < 128, np.minimum(_VALUES + add, 255), _VALUES))


RAND_AUGMENT_OPS = {
    "AutoContrast": lambda pixels, level, rng: enhance.autocontrast(pixels),
    "Equalize": lambda pixels, level, rng: enhance.equalize(pixels),
    "Invert": lambda pixels, level, rng: enhance.invert(pixels),
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhancer(enhance.color),
    "ContrastIncreasing": _enhancer(enhance.contrast),
    "BrightnessIncreasing": _enhancer(enhance.brightness),
    "SharpnessIncreasing": _enhancer(enhance.sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x,
    "TranslateYRel": _translate_y,
}
_OP_NAMES = tuple(RAND_AUGMENT_OPS)


def parse_randaugment(spec: str) -> dict:
    """``rand-m9-mstd0.5-inc1`` -> {'magnitude': 9, 'magnitude_std': 0.5, 'num_ops': 2}."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand-': {spec!r}")
    options = {"magnitude": 10.0, "magnitude_std": 0.0, "num_ops": 2, "prob": 0.5}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|m|n|p|inc)([\d.]+)", part)
        if not match:
            raise ValueError(f"unknown RandAugment option {part!r} in {spec!r}")
        key, value = match.groups()
        if key == "inc":
            if value != "1":
                raise ValueError(f"only the increasing op set (inc1) is implemented: {spec!r}")
        elif key == "n":
            options["num_ops"] = int(value)
        else:
            options[{"m": "magnitude", "mstd": "magnitude_std", "p": "prob"}[key]] = float(value)
    return options


@functools.lru_cache(maxsize=16)
def _randaugment_options(spec: str) -> tuple[tuple[str, float], ...]:
    """:func:`parse_randaugment` once per spec (``train_transform`` asks for every image)."""
    return tuple(parse_randaugment(spec).items())


def rand_augment(image, rng: np.random.Generator, magnitude=9.0, magnitude_std=0.5, num_ops=2, prob=0.5):
    """timm's RandAugment (``rand_augment_transform``): ``num_ops`` ops drawn from
    :data:`RAND_AUGMENT_OPS`, each applied with probability ``prob`` at a level drawn around
    ``magnitude`` (clipped to [0, 10]). ``image``: uint8 RGB pixels, an array (an array comes back)
    or a ``PIL.Image`` (one comes back)."""
    pixels = np.asarray(image) if isinstance(image, Image.Image) else image
    for index in rng.choice(len(_OP_NAMES), size=num_ops, replace=True):
        if rng.random() > prob:
            continue
        level = magnitude + (rng.normal(0.0, magnitude_std) if magnitude_std > 0 else 0.0)
        level = min(max(level, 0.0), _MAX_LEVEL)
        pixels = RAND_AUGMENT_OPS[_OP_NAMES[index]](pixels, float(level), rng)
    return Image.fromarray(pixels) if isinstance(image, Image.Image) else pixels


def erase_box(
    height: int, width: int, rng: np.random.Generator, prob: float, area=(0.02, 1 / 3), min_aspect=0.3
) -> tuple[int, int, int, int] | None:
    """:func:`random_erasing`'s rectangle ``(top, left, height, width)`` for an image of
    ``height x width``, or None (no erasing), drawn from ``rng`` with its draws: all of them
    but the noise."""
    if prob <= 0 or rng.random() >= prob:
        return None
    _check_range("random erasing area", area)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target = height * width * _uniform(rng, *area)
        aspect = math.exp(_uniform(rng, *log_aspect))
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if h < height and w < width:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return None


def random_erasing(
    image: np.ndarray, rng: np.random.Generator, prob: float, area=(0.02, 1 / 3), min_aspect=0.3
) -> np.ndarray:
    """Replaces a random rectangle of a normalized HWC image with per-pixel normal noise."""
    height, width, channels = image.shape
    box = erase_box(height, width, rng, prob, area, min_aspect)
    if box is None:
        return image
    top, left, h, w = box
    image = image.copy()
    image[top : top + h, left : left + w] = rng.standard_normal((h, w, channels)).astype(image.dtype)
    return image


class ErasedImage(NamedTuple):
    """:func:`train_transform`'s result with ``normalize_image=False``: the augmented uint8
    pixels, and random erasing's rectangle and noise, for the device to put in once it has
    normalised the pixels (:func:`fill_erased`)."""

    image: np.ndarray  # uint8 HWC, not erased
    erase: np.ndarray  # int32 [4]: top, left, height, width; all 0 where nothing is erased
    noise: np.ndarray  # float32 [height * width * C]: the rectangle's noise, row-major; empty where none


NO_ERASE = np.zeros(4, np.int32)
NO_ERASE.flags.writeable = False
NO_NOISE = np.zeros(0, np.float32)
NO_NOISE.flags.writeable = False


def max_erase_pixels(height: int, width: int, area=(0.02, 1 / 3)) -> int:
    """A bound on the pixels of :func:`erase_box`'s rectangle in a ``height x width`` image
    (``h * w`` for ``h = round(sqrt(t a))``, ``w = round(sqrt(t / a))``, ``t < area[1] H W``,
    ``h < H``, ``w < W``: at most ``t + (h + w) / 2 + 1/4``): the length, per channel, of
    the noise every image of a batch carries (:func:`erase_noise`), so its shape is fixed."""
    return min((height - 1) * (width - 1), int(height * width * area[1] + 0.5 * (height + width)) + 1)


def erase_noise(examples: Sequence[ErasedImage]) -> np.ndarray:
    """The noise of a batch of :class:`ErasedImage` s, ``[B, max_erase_pixels(H, W) * C]``
    float32, each image's zero-padded."""
    height, width, channels = examples[0].image.shape
    out = np.zeros((len(examples), max_erase_pixels(height, width) * channels), np.float32)
    for row, example in zip(out, examples, strict=True):
        row[: example.noise.size] = example.noise
    return out


def fill_erased(images, erase, noise):
    """Random erasing of a normalised float batch ``[B, H, W, C]``, on the device (jax): the
    rectangle ``erase[i]`` (``[B, 4]``: top, left, height, width) of image ``i`` replaced by
    the noise ``noise[i]`` (``[B, L]``, the first ``height * width * C`` values, row-major), as
    :func:`random_erasing` replaces it on the host; other pixels, and images with an empty
    rectangle, unchanged. With a batch of :class:`ErasedImage` s (``erase`` stacked,
    :func:`erase_noise`), this is :func:`train_transform`'s float32 batch exactly, given the
    host's normalisation (tested)."""
    import jax.numpy as jnp

    batch, height, width, channels = images.shape
    erase = jnp.asarray(erase, jnp.int32)
    top, left, h, w = (erase[:, i, None, None] for i in range(4))
    rows, cols = jnp.arange(height)[None, :, None], jnp.arange(width)[None, None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)  # [B, H, W]
    index = jnp.where(inside, (rows - top) * w + (cols - left), 0).reshape(batch, height * width, 1)
    noise = jnp.asarray(noise, images.dtype).reshape(batch, -1, channels)
    values = jnp.take_along_axis(noise, index, axis=1, mode="clip").reshape(images.shape)
    return jnp.where(inside[..., None], values, images)


def train_transform(
    image: np.ndarray | EncodedImage,
    rng: np.random.Generator,
    *,
    size: int,
    mean,
    std,
    augment,
    max_reduce: int = 8,
    decoder: str = "auto",
    normalize_image: bool = True,
) -> np.ndarray | ErasedImage:
    """RGB uint8 HWC -> augmented, normalized float32 HWC, following ``config.augment``.

    An :class:`EncodedImage` is cropped with the same draws as its decoded array, and decoded
    at up to 1/``max_reduce`` scale where the crop allows (:func:`resized_crop`).

    ``normalize_image=False`` leaves normalisation and random erasing to the device: an
    :class:`ErasedImage`, the uint8 pixels before normalisation, and the erasing rectangle and
    its noise, from the same draws; normalised and erased by :func:`fill_erased`, they are this
    function's float32 pixels exactly. Without random erasing (``augment.random_erasing`` 0), the
    uint8 pixels alone."""
    width, height = image.size if isinstance(image, EncodedImage) else (image.shape[1], image.shape[0])
    box = crop_box(width, height, rng, tuple(augment.crop_scale)) if augment.random_resized_crop else None
    flip = bool(augment.hflip and rng.random() < 0.5)  # drawn after the box, as the flip follows the crop
    if isinstance(image, EncodedImage):
        pixels = resized_crop(
            image, box or (0, 0, width, height), size, augment.interpolation, max_reduce, decoder, mirror=flip
        )
    else:
        pixels = resize_box(image, box, size, augment.interpolation, mirror=flip)
    if augment.randaugment:
        pixels = rand_augment(pixels, rng, **dict(_randaugment_options(augment.randaugment)))
    if not normalize_image and not augment.random_erasing:  # uint8 out, nothing to erase
        return pixels
    if not normalize_image:  # random_erasing's draws, noise included; the device puts it in
        box = erase_box(*pixels.shape[:2], rng, augment.random_erasing)
        if box is None:
            return ErasedImage(pixels, NO_ERASE, NO_NOISE)
        noise = rng.standard_normal((box[2], box[3], pixels.shape[2])).astype(np.float32)
        return ErasedImage(pixels, np.asarray(box, np.int32), noise.reshape(-1))
    return random_erasing(normalize(pixels, mean, std), rng, augment.random_erasing)


# --- The same transform on a whole batch (numpy), where it has no per-image PIL step ---

_PRECISION_BITS = 22  # Pillow's fixed-point resampling of 8-bit images (libImaging/Resample.c)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5)."""
    a, x = -0.5, np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


@functools.lru_cache(maxsize=8192)
def resample_weights(in0: int, in1: int, in_size: int, out_size: int) -> np.ndarray:
    """Pillow's fixed-point bicubic weights for resizing ``[in0, in1)`` of an axis of
    ``in_size`` pixels to ``out_size``: ``[out_size, in_size]`` integers (as float64), one row
    per output pixel, each summing to about ``2**22``; computed as Pillow's
    ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` compute them (read-only, cached)."""
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    center = in0 + (np.arange(out_size, dtype=np.float64)[:, None] + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0.0)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size)
    x = np.arange(in_size, dtype=np.float64)[None, :]
    k = np.where((x >= xmin) & (x < xmax), _bicubic((x - center + 0.5) / filterscale), 0.0)
    total = k.sum(-1, keepdims=True)
    k = np.where(total != 0.0, k / np.where(total != 0.0, total, 1.0), k)
    weights = np.sign(k) * np.floor(np.abs(k) * (1 << _PRECISION_BITS) + 0.5)
    weights.flags.writeable = False
    return weights


def _fixed_point_pass(sums: np.ndarray) -> np.ndarray:
    """Pillow's rounding of one resampling pass, in place: ``clip8((sum + 2**21) >> 22)``."""
    sums += 1 << (_PRECISION_BITS - 1)
    sums *= 1.0 / (1 << _PRECISION_BITS)
    np.floor(sums, out=sums)
    return np.clip(sums, 0.0, 255.0, out=sums)


@functools.cache
def _pillow_can_resize_vertically_first() -> bool:
    """Whether the installed Pillow runs the vertical pass first when an image's height shrinks by
    more than twice what its width does (Pillow 13 does, to save work; earlier releases always
    ran the horizontal pass first). Found once per process from one small resize whose two
    orders round differently."""
    image = np.random.default_rng(0).integers(0, 256, (26, 18), dtype=np.uint8)
    pillow = np.asarray(Image.fromarray(image).resize((16, 16), Image.BICUBIC, box=(2, 3, 16, 25)))
    wx, wy = resample_weights(2, 16, 18, 16), resample_weights(3, 25, 26, 16)
    vertical_first = _fixed_point_pass(_fixed_point_pass(wy @ image.astype(np.float64)) @ wx.T)
    return bool(np.array_equal(pillow, vertical_first))


def _vertical_first(height: int, width: int, size: int) -> bool:
    """Pillow's choice of pass order for resizing an ``height x width`` image to ``size x size``."""
    shrink_y, shrink_x = height - size, width - size
    return shrink_y > 0 and shrink_y > 2 * shrink_x and _pillow_can_resize_vertically_first()


def _is_gray(images: np.ndarray) -> bool:
    """Whether every image of an ``[B, H, W, 3]`` batch has equal R, G and B (gray scans stored as
    RGB: digits, MNIST-like tfds sets)."""
    return bool(np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2]))


_SPAN_TABLE_BYTES = 16 << 20  # an axis this short (up to ~40 pixels at 32 out) has every span's weights in one table


@functools.lru_cache(maxsize=8)
def _span_table(in_size: int, size: int) -> np.ndarray:
    """:func:`resample_weights` of every span ``[start, stop)`` of an axis of ``in_size`` pixels,
    at row ``start * (in_size + 1) + stop`` (read-only). Computed past ``resample_weights``'s own
    cache, which would otherwise keep a second copy of every span."""
    weights = resample_weights.__wrapped__
    table = np.zeros(((in_size + 1) ** 2, size, in_size))
    for start in range(in_size):
        for stop in range(start + 1, in_size + 1):
            table[start * (in_size + 1) + stop] = weights(start, stop, in_size, size)
    table.flags.writeable = False
    return table


def _span_weights(starts: np.ndarray, stops: np.ndarray, in_size: int, size: int) -> np.ndarray:
    """:func:`resample_weights` of each span ``[starts[i], stops[i])``, ``[B, size, in_size]``: one
    gather from a table of all spans where the axis is short (small images: the digits job), else
    looked up span by span."""
    if (in_size + 1) ** 2 * size * in_size * 8 <= _SPAN_TABLE_BYTES:
        return _span_table(in_size, size)[starts * (in_size + 1) + stops]
    return np.stack(
        [resample_weights(start, stop, in_size, size) for start, stop in zip(starts.tolist(), stops.tolist())]
    )


def resize_boxes(images: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """``Image.resize((size, size), BICUBIC, box=box)`` of each ``[H, W, C]`` uint8 image of a
    batch (uint8 ``[B, size, size, C]``), computed as Pillow computes it (one pass per axis, in
    Pillow's order, each rounded to 8 bits in fixed point): the same pixels, in one native call
    (:func:`vitjax.kernels.resample.resize_batch`) where it is built, else with two batched
    matrix products instead of one Pillow call per image. The sums are exact in float64
    (255 x 2**22 x width < 2**53). A gray batch (R = G = B in every image) is resized one channel
    at a time, as the three would come out equal (a third of the work)."""
    native = resample.resize_batch(images, boxes, (size, size))
    if native is not None:
        return native
    batch, height, width, channels = images.shape
    if channels == 3 and _is_gray(images):
        return np.repeat(resize_boxes(images[..., :1], boxes, size), 3, axis=-1)
    boxes = np.asarray(boxes, np.int64)
    wx = _span_weights(boxes[:, 0], boxes[:, 2], width, size)  # [B, size, W]
    wy = _span_weights(boxes[:, 1], boxes[:, 3], height, size)  # [B, size, H]
    pixels = images.transpose(0, 3, 1, 2).astype(np.float64)  # [B, C, H, W]
    if _vertical_first(height, width, size):
        columns = _fixed_point_pass(wy[:, None] @ pixels)  # [B, C, size, W]
        out = _fixed_point_pass(columns @ wx[:, None].transpose(0, 1, 3, 2))  # [B, C, size, size]
    else:
        rows = _fixed_point_pass(pixels.reshape(batch, channels * height, width) @ wx.transpose(0, 2, 1))
        out = _fixed_point_pass(wy[:, None] @ rows.reshape(batch, channels, height, size))  # [B, C, size, size]
    return out.astype(np.uint8).transpose(0, 2, 3, 1)


def batch_transform_supported(augment) -> bool:
    """Whether :func:`train_transform_batch` covers ``augment``: bicubic random resized crop
    (or none), flips; no RandAugment, no random erasing (per-image PIL and noise steps)."""
    return not augment.randaugment and not augment.random_erasing and augment.interpolation == "bicubic"


def train_transform_batch(
    images: np.ndarray | Sequence[EncodedImage],
    rngs,
    *,
    size: int,
    mean,
    std,
    augment,
    normalize_images: bool = True,
    max_reduce: int = 8,
    decoder: str = "auto",
) -> np.ndarray:
    """:func:`train_transform` of a batch of equally sized RGB uint8 images, image ``i`` drawn
    from ``rngs[i]`` exactly as ``train_transform(images[i], rngs[i], ...)`` draws: the same
    boxes, flips and pixels (tested equal), for configs where :func:`batch_transform_supported`.
    ``normalize_images=False`` returns uint8 (normalise later, e.g. on the device).

    ``images`` may also be a sequence of images of any sizes, arrays or :class:`EncodedImage` s
    (or the object array ``np.stack`` makes of the latter): each is cropped as
    :func:`train_transform` crops it, an encoded one from its own scale of decoding."""
    if not batch_transform_supported(augment):
        raise ValueError("train_transform_batch has no RandAugment, random erasing or non-bicubic resize")
    one_array = isinstance(images, np.ndarray) and images.dtype != object
    if one_array:
        sizes = [(images.shape[2], images.shape[1])] * len(images)
    else:
        sizes = [image.size if isinstance(image, EncodedImage) else image.shape[1::-1] for image in images]
    boxes, flips = [], []
    crop, scale, hflip = augment.random_resized_crop, tuple(augment.crop_scale), augment.hflip  # read once a batch
    for rng, (width, height) in zip(rngs, sizes, strict=True):
        boxes.append(crop_box(width, height, rng, scale) if crop else (0, 0, width, height))
        flips.append(bool(hflip and rng.random() < 0.5))
    if not one_array:
        out = np.stack(
            [
                resized_crop(image, box, size, augment.interpolation, max_reduce, decoder)
                for image, box in zip(images, boxes, strict=True)
            ]
        )
    else:
        out = resize_boxes(images, np.asarray(boxes), size)
    if any(flips):
        out[flips] = out[flips, :, ::-1]
    return normalize(out, mean, std) if normalize_images else out
