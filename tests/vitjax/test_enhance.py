"""RandAugment's colour ops on arrays (``vitjax.kernels.enhance``) give Pillow's pixels exactly,
and ``augment.RAND_AUGMENT_OPS`` gives timm's RandAugment ops' pixels (the peer, on PIL images)
for the same levels and signs."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from vitjax.data.augment import RAND_AUGMENT_OPS
from vitjax.kernels import enhance

pytestmark = pytest.mark.skipif(enhance.native_reason() is not None, reason=str(enhance.native_reason()))


def random_images(count: int, seed: int = 0):
    """L and RGB images from 1x1 up, narrow value ranges, one-value images, and the extremes."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        shape = (height, width) if i % 3 == 0 else (height, width, 3)
        low = int(rng.integers(0, 250))
        high = int(rng.integers(low, 256))
        image = rng.integers(low, high + 1, shape, dtype=np.uint8)
        if i % 11 == 0:
            image[...] = low
        yield image


FACTORS = [0.0, 1.0, 0.1, 1.9, 0.5, 2.0, -0.3, 2.7, 1.3333333]  # RandAugment's range, both extremes, beyond

PILLOW = {
    "autocontrast": (lambda a, f: enhance.autocontrast(a), lambda im, f: ImageOps.autocontrast(im)),
    "equalize": (lambda a, f: enhance.equalize(a), lambda im, f: ImageOps.equalize(im)),
    "invert": (lambda a, f: enhance.invert(a), lambda im, f: ImageOps.invert(im)),
    "color": (enhance.color, lambda im, f: ImageEnhance.Color(im).enhance(f)),
    "contrast": (enhance.contrast, lambda im, f: ImageEnhance.Contrast(im).enhance(f)),
    "brightness": (enhance.brightness, lambda im, f: ImageEnhance.Brightness(im).enhance(f)),
    "sharpness": (enhance.sharpness, lambda im, f: ImageEnhance.Sharpness(im).enhance(f)),
    "smooth": (lambda a, f: enhance.smooth(a), lambda im, f: im.filter(ImageFilter.SMOOTH)),
}


@pytest.mark.parametrize("name", list(PILLOW))
def test_each_op_gives_pillows_pixels_on_random_images(name):
    ours, pillow = PILLOW[name]
    for i, image in enumerate(random_images(120)):
        factor = FACTORS[i % len(FACTORS)]
        expected = np.asarray(pillow(Image.fromarray(image), factor))
        got = ours(image, factor)
        assert got.dtype == np.uint8 and got.shape == image.shape
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} of {image.shape}, factor {factor}")


@pytest.mark.parametrize("bits", range(1, 9))
def test_posterize_and_solarize_give_pillows_pixels(bits):
    for i, image in enumerate(random_images(20, seed=bits)):
        pil = Image.fromarray(image)
        np.testing.assert_array_equal(enhance.posterize(image, bits), np.asarray(ImageOps.posterize(pil, bits)))
        threshold = [0, 1, 128, 255, 256, 37][i % 6]
        np.testing.assert_array_equal(enhance.solarize(image, threshold), np.asarray(ImageOps.solarize(pil, threshold)))


def test_histogram_and_lookup_tables_are_pillows():
    for image in random_images(30, seed=5):
        pil = Image.fromarray(image)
        np.testing.assert_array_equal(enhance.histogram(image).reshape(-1), pil.histogram())
        bands = 1 if image.ndim == 2 else 3
        table = np.random.default_rng(bands).integers(-20, 300, 256 * bands)  # clipped to 0..255, as Pillow clips
        np.testing.assert_array_equal(enhance.apply_lut(image, table), np.asarray(pil.point(table.tolist())))


def test_photographs_and_a_non_contiguous_view():
    import skimage.data

    photo = skimage.data.chelsea()
    view = photo[10:234:1, 300:20:-1]  # a flipped crop, not contiguous
    for name, (ours, pillow) in PILLOW.items():
        for image in (photo, view):
            expected = np.asarray(pillow(Image.fromarray(np.ascontiguousarray(image)), 1.4))
            np.testing.assert_array_equal(ours(image, 1.4), expected, err_msg=name)


def test_native_false_and_other_modes_run_pillow_itself():
    image = next(random_images(2, seed=3))
    calls = {
        "autocontrast": lambda native: enhance.autocontrast(image, native=native),
        "equalize": lambda native: enhance.equalize(image, native=native),
        "solarize": lambda native: enhance.solarize(image, 99, native=native),
        "color": lambda native: enhance.color(image, 0.3, native=native),
        "contrast": lambda native: enhance.contrast(image, 1.7, native=native),
        "sharpness": lambda native: enhance.sharpness(image, 1.2, native=native),
        "histogram": lambda native: enhance.histogram(image, native=native),
    }
    for name, call in calls.items():
        np.testing.assert_array_equal(call(False), call(None), err_msg=name)
    rgba = np.random.default_rng(0).integers(0, 256, (9, 7, 4), dtype=np.uint8)  # RGBA: Pillow's own call
    np.testing.assert_array_equal(
        enhance.brightness(rgba, 0.6), np.asarray(ImageEnhance.Brightness(Image.fromarray(rgba)).enhance(0.6))
    )


def test_without_the_library_the_ops_say_why_and_run_pillow():
    script = (
        "import numpy as np; from vitjax.kernels import enhance; "
        "image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3); "
        "print(enhance.native_reason()); print(enhance.equalize(image).sum(), enhance.color(image, 0.5).sum())"
    )
    env = {**os.environ, "VITJAX_NATIVE_RESAMPLE": "0"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    reason, sums = out.splitlines()
    assert reason == "VITJAX_NATIVE_RESAMPLE=0"
    assert sums == f"{enhance.equalize(image).sum()} {enhance.color(image, 0.5).sum()}"


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="color takes uint8"):
        enhance.color(np.zeros((4, 4, 3), np.float32), 0.5)
    with pytest.raises(ValueError, match="posterize keeps 1 to 8 bits, not 0"):
        enhance.posterize(np.zeros((4, 4, 3), np.uint8), 0)
    with pytest.raises(ValueError, match="100 table entries for 3 band"):
        enhance.apply_lut(np.zeros((4, 4, 3), np.uint8), np.arange(100))


def timm_ops():
    auto_augment = pytest.importorskip("timm.data.auto_augment")
    return auto_augment


@pytest.mark.parametrize(
    "name",
    [
        "AutoContrast",
        "Equalize",
        "Invert",
        "PosterizeIncreasing",
        "SolarizeIncreasing",
        "SolarizeAdd",
        "ColorIncreasing",
        "ContrastIncreasing",
        "BrightnessIncreasing",
        "SharpnessIncreasing",
    ],
)
def test_randaugments_colour_ops_give_timms_pixels(name):
    """Our op at a level against timm's op (``NAME_TO_OP``) at the argument timm's ``LEVEL_TO_ARG``
    makes of that level, with our draw's sign: the pixels of timm's RandAugment, on photographs."""
    import skimage.data

    auto_augment = timm_ops()
    photos = [skimage.data.astronaut()[::2, ::2], skimage.data.coffee()[100:324, 200:424], skimage.data.chelsea()]
    for seed, level in enumerate([0.0, 2.5, 5.0, 9.0, 9.7, 10.0]):
        for photo in photos:
            rng = np.random.default_rng(seed)
            negative = np.random.default_rng(seed).random() < 0.5  # the sign our op draws first
            ours = RAND_AUGMENT_OPS[name](np.ascontiguousarray(photo), level, rng)
            if name.endswith("Increasing") and name[:-10] in ("Color", "Contrast", "Brightness", "Sharpness"):
                magnitude = level / 10.0 * 0.9
                args = (max(0.1, 1.0 - magnitude if negative else 1.0 + magnitude),)
            elif auto_augment.LEVEL_TO_ARG[name] is None:
                args = ()
            else:
                args = tuple(auto_augment.LEVEL_TO_ARG[name](level, {}))
                if name == "PosterizeIncreasing":
                    args = (max(1, args[0]),)  # Pillow 13 refuses 0 bits; ours keeps 1 (test_data)
            theirs = np.asarray(auto_augment.NAME_TO_OP[name](Image.fromarray(photo), *args))
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{name} at level {level}")
