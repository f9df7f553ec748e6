"""Training-time augmentation on single images (PIL + numpy), as the DeiT recipe uses it.

Every function takes a ``numpy.random.Generator`` so that the augmentation of an
example depends only on (seed, position in the data stream): a resumed run sees
exactly the images an uninterrupted run would have seen.

Mixup/CutMix act on whole batches and live in :mod:`vitjax.training.train` (on device).
"""

from __future__ import annotations

import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from vitjax.data.transforms import _PIL_RESAMPLE, normalize

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
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            break
    else:  # fall back to a center crop of the whole image
        w, h = width, height
        left, top = 0, 0
    return image.resize((size, size), _PIL_RESAMPLE[interpolation], box=(left, top, left + w, top + h))


# --- RandAugment ("rand-m9-mstd0.5-inc1": 2 ops, magnitude ~ N(9, 0.5), increasing ops) ---

_MAX_LEVEL = 10.0


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(image: Image.Image, matrix) -> Image.Image:
    return image.transform(image.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=_FILL)


def _rotate(image, level, rng):
    return image.rotate(_signed(level / _MAX_LEVEL * 30.0, rng), resample=Image.BICUBIC, fillcolor=_FILL)


def _shear_x(image, level, rng):
    return _affine(image, (1, _signed(level / _MAX_LEVEL * 0.3, rng), 0, 0, 1, 0))


def _shear_y(image, level, rng):
    return _affine(image, (1, 0, 0, _signed(level / _MAX_LEVEL * 0.3, rng), 1, 0))


def _translate_x(image, level, rng):
    return _affine(image, (1, 0, _signed(level / _MAX_LEVEL * 0.45, rng) * image.size[0], 0, 1, 0))


def _translate_y(image, level, rng):
    return _affine(image, (1, 0, 0, 0, 1, _signed(level / _MAX_LEVEL * 0.45, rng) * image.size[1]))


def _enhancer(kind):
    def apply(image, level, rng):
        return kind(image).enhance(1.0 + _signed(level / _MAX_LEVEL * 0.9, rng))

    return apply


def _posterize(image, level, rng):
    return ImageOps.posterize(image, max(1, 4 - int(level / _MAX_LEVEL * 4)))


def _solarize(image, level, rng):
    return ImageOps.solarize(image, 256 - int(level / _MAX_LEVEL * 256))


def _solarize_add(image, level, rng):
    add = int(level / _MAX_LEVEL * 110)
    pixels = np.asarray(image).astype(np.int16)
    return Image.fromarray(np.where(pixels < 128, np.minimum(pixels + add, 255), pixels).astype(np.uint8))


RAND_AUGMENT_OPS = {
    "AutoContrast": lambda image, level, rng: ImageOps.autocontrast(image),
    "Equalize": lambda image, level, rng: ImageOps.equalize(image),
    "Invert": lambda image, level, rng: ImageOps.invert(image),
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhancer(ImageEnhance.Color),
    "ContrastIncreasing": _enhancer(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhancer(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhancer(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x,
    "TranslateYRel": _translate_y,
}


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


def rand_augment(image: Image.Image, rng: np.random.Generator, magnitude=9.0, magnitude_std=0.5, num_ops=2, prob=0.5):
    names = list(RAND_AUGMENT_OPS)
    for index in rng.choice(len(names), size=num_ops, replace=True):
        if rng.random() > prob:
            continue
        level = magnitude + (rng.normal(0.0, magnitude_std) if magnitude_std > 0 else 0.0)
        level = float(np.clip(level, 0.0, _MAX_LEVEL))
        image = RAND_AUGMENT_OPS[names[index]](image, level, rng)
    return image


def random_erasing(
    image: np.ndarray, rng: np.random.Generator, prob: float, area=(0.02, 1 / 3), min_aspect=0.3
) -> np.ndarray:
    """Replaces a random rectangle of a normalized HWC image with per-pixel normal noise."""
    if prob <= 0 or rng.random() >= prob:
        return image
    height, width, channels = image.shape
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target = height * width * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_aspect))
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if h < height and w < width:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            image = image.copy()
            image[top : top + h, left : left + w] = rng.standard_normal((h, w, channels)).astype(image.dtype)
            return image
    return image


def train_transform(image: np.ndarray, rng: np.random.Generator, *, size: int, mean, std, augment) -> np.ndarray:
    """RGB uint8 HWC -> augmented, normalized float32 HWC, following ``config.augment``."""
    pil = Image.fromarray(image)
    if augment.random_resized_crop:
        pil = random_resized_crop(pil, size, rng, tuple(augment.crop_scale), interpolation=augment.interpolation)
    else:
        pil = pil.resize((size, size), _PIL_RESAMPLE[augment.interpolation])
    if augment.hflip and rng.random() < 0.5:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    if augment.randaugment:
        pil = rand_augment(pil, rng, **parse_randaugment(augment.randaugment))
    out = normalize(np.asarray(pil), mean, std)
    return random_erasing(out, rng, augment.random_erasing)
