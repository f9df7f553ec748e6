"""The native resize and affine transform give Pillow's pixels exactly, and fall back to Pillow."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vitjax.kernels import resample
from vitjax.kernels.build import KernelUnavailable

pytestmark = pytest.mark.skipif(resample.native_reason() is not None, reason=f"{resample.native_reason()}")

FILL = (124, 116, 104)


def photo(shape, seed):
    """Smooth gradients with noise: the values a resize rounds differently if its arithmetic differs."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    ramp = (np.arange(h)[:, None] * 3 + np.arange(w)[None, :] * 5) % 256
    image = ramp[..., None] + rng.integers(-40, 40, (h, w, shape[2] if len(shape) == 3 else 1))
    return np.clip(image, 0, 255).astype(np.uint8).reshape(shape)


def random_box(rng, width, height, integer):
    left, top = rng.uniform(0, width), rng.uniform(0, height)
    right, bottom = rng.uniform(left, width), rng.uniform(top, height)
    if integer:
        return int(left), int(top), max(int(left) + 1, int(np.ceil(right))), max(int(top) + 1, int(np.ceil(bottom)))
    return left, top, right, bottom


def test_resize_matches_pillow_on_random_images_boxes_and_sizes():
    rng = np.random.default_rng(0)
    for case in range(300):
        height, width = (int(v) for v in rng.integers(1, 90, 2))
        shape = (height, width, 3) if case % 3 else (height, width)
        image = photo(shape, case)
        size = tuple(int(v) for v in rng.integers(1, 80, 2))
        box = None if case % 7 == 0 else random_box(rng, width, height, integer=case % 2 == 0)
        ours = resample.resize(image, size, box)
        pillow = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC, box=box))
        np.testing.assert_array_equal(ours, pillow, err_msg=f"{shape} -> {size}, box {box}")


@pytest.mark.parametrize(
    "shape, size, box",
    [
        ((375, 500, 3), (224, 224), (60, 40, 400, 330)),  # the recipe's crop of a 500x375 photo
        ((375, 500, 3), (224, 224), (12.5, 3.25, 250.0, 187.5)),  # a box scaled for reduced decoding
        ((400, 60, 3), (40, 100), (0, 0, 60, 400)),  # height shrinks > 2x the width: Pillow 13's vertical pass first
        ((40, 30, 3), (224, 224), None),  # upscaling
        ((300, 300, 3), (224, 224), (10, 20, 234, 244)),  # an integer box of the output's size: a crop
        ((50, 50, 3), (50, 50), None),  # the same size: a copy
        ((50, 80, 3), (80, 30), (0, 0, 80, 50)),  # one axis only
        ((1, 1, 3), (7, 5), None),
    ],
)
def test_resize_matches_pillow_on_the_pipelines_cases(shape, size, box):
    image = photo(shape, 1)
    pillow = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC, box=box))
    np.testing.assert_array_equal(resample.resize(image, size, box), pillow)
    np.testing.assert_array_equal(resample.resize(image, size, box, native=False), pillow)
    flipped = np.asarray(Image.fromarray(pillow).transpose(Image.FLIP_LEFT_RIGHT))  # the pipeline's flip, in place
    np.testing.assert_array_equal(resample.resize(image, size, box, mirror=True), flipped)
    np.testing.assert_array_equal(resample.resize(image, size, box, mirror=True, native=False), flipped)


def test_affine_matches_pillow_on_random_matrices():
    rng = np.random.default_rng(2)
    for case in range(200):
        height, width = (int(v) for v in rng.integers(1, 70, 2))
        shape = (height, width, 3) if case % 4 else (height, width)
        image = photo(shape, case)
        matrix = tuple(rng.normal([1, 0, 0, 0, 1, 0], [0.3, 0.3, 10, 0.3, 0.3, 10]))
        fill = FILL if len(shape) == 3 else 77
        pillow = Image.fromarray(image).transform(
            image.shape[1::-1], Image.AFFINE, matrix, Image.BICUBIC, fillcolor=fill
        )
        np.testing.assert_array_equal(resample.affine(image, matrix, fill), np.asarray(pillow), err_msg=f"{matrix}")


@pytest.mark.parametrize("op", ["shear_x", "shear_y", "translate_x", "translate_y", "rotate"])
def test_randaugments_geometric_ops_match_pillow(op):
    """RandAugment's matrices: the zero fractions of shears and translations take a shorter path."""
    rng = np.random.default_rng(3)
    for case in range(60):
        height, width = (int(v) for v in rng.integers(2, 120, 2))
        image = photo((height, width, 3), case)
        shear, shift = rng.uniform(-0.3, 0.3), rng.uniform(-0.45, 0.45)
        if case % 5 == 0:
            shift = round(shift * 10) / 10
        pil = Image.fromarray(image)
        if op == "rotate":
            angle = rng.uniform(-30, 30) if case % 6 else [0.0, 90.0, 180.0, -30.0, 30.0, 270.0][case // 6 % 6]
            expected = pil.rotate(angle, resample=Image.BICUBIC, fillcolor=FILL)
            np.testing.assert_array_equal(resample.rotate(image, angle, FILL), np.asarray(expected), err_msg=f"{angle}")
            continue
        matrix = {
            "shear_x": (1, shear, 0, 0, 1, 0),
            "shear_y": (1, 0, 0, shear, 1, 0),
            "translate_x": (1, 0, shift * width, 0, 1, 0),
            "translate_y": (1, 0, 0, 0, 1, shift * height),
        }[op]
        expected = pil.transform(pil.size, Image.AFFINE, matrix, Image.BICUBIC, fillcolor=FILL)
        np.testing.assert_array_equal(resample.affine(image, matrix, FILL), np.asarray(expected), err_msg=f"{matrix}")


def test_images_with_alpha_go_to_pillow_which_premultiplies_them():
    image = photo((20, 30, 4), 4)
    pil = Image.fromarray(image)
    np.testing.assert_array_equal(
        resample.resize(image, (11, 13), (1, 2, 25, 19)),
        np.asarray(pil.resize((11, 13), Image.BICUBIC, (1, 2, 25, 19))),
    )
    matrix = (0.9, 0.1, 1.5, -0.1, 1.1, -2.0)
    np.testing.assert_array_equal(
        resample.affine(image, matrix, (1, 2, 3, 4)),
        np.asarray(pil.transform(pil.size, Image.AFFINE, matrix, Image.BICUBIC, fillcolor=(1, 2, 3, 4))),
    )


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="uint8"):
        resample.resize(np.zeros((4, 4, 3), np.float32), (2, 2))
    with pytest.raises(ValueError, match="can't exceed"):
        resample.resize(np.zeros((4, 4, 3), np.uint8), (2, 2), (0, 0, 5, 4))
    with pytest.raises(ValueError, match="negative"):
        resample.resize(np.zeros((4, 4, 3), np.uint8), (2, 2), (-1, 0, 4, 4))
    with pytest.raises(ValueError, match="must be > 0"):
        resample.resize(np.zeros((4, 4, 3), np.uint8), (0, 2))


def test_without_the_library_the_same_calls_run_pillow(tmp_path):
    """``VITJAX_NATIVE_RESAMPLE=0`` (or no compiler) gives the same pixels through Pillow, and says why."""
    script = (
        "import numpy as np; from vitjax.kernels import resample as r; "
        "x = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3); "
        "print(r.native_reason()); np.save(r'{}', r.resize(x, (17, 9), (1.5, 2, 38, 29)))"
    )
    outs = {}
    for name, env in {"native": {}, "pillow": {"VITJAX_NATIVE_RESAMPLE": "0"}, "no-cc": {"CC": "/bin/false"}}.items():
        target = tmp_path / f"{name}.npy"
        done = subprocess.run(
            [sys.executable, "-c", script.format(target)],
            capture_output=True,
            text=True,
            check=True,
            env={**__import__("os").environ, "VITJAX_CACHE": str(tmp_path / name / "cache"), **env},
        )
        outs[name] = (done.stdout.strip(), np.load(target))
    assert outs["native"][0] == "None"
    assert outs["pillow"][0] == "VITJAX_NATIVE_RESAMPLE=0"
    assert "pillow_exact.c failed (/bin/false exit 1)" in outs["no-cc"][0]
    np.testing.assert_array_equal(outs["native"][1], outs["pillow"][1])
    np.testing.assert_array_equal(outs["native"][1], outs["no-cc"][1])


def test_library_is_built_once_per_cache(tmp_path, monkeypatch):
    built = resample.build(tmp_path)
    stamp = built.stat().st_mtime_ns
    assert resample.build(tmp_path) == built and built.stat().st_mtime_ns == stamp
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(
        KernelUnavailable, match=r"no compiler found \(set CC, or install gcc\) to build pillow_exact\.c"
    ):
        resample.build(tmp_path / "other")


def test_a_batch_is_resized_in_one_call_each_image_with_its_box():
    rng = np.random.default_rng(6)
    images = np.stack([photo((12, 9, 3), seed) for seed in range(40)])
    boxes = np.array([random_box(rng, 9, 12, integer=True) for _ in range(40)])
    boxes[0] = (1, 2, 9, 12)  # 8x10: Pillow's crop when that is the output size
    got = resample.resize_batch(images, boxes, (8, 10))
    for image, box, out in zip(images, boxes, got, strict=True):
        box = tuple(int(v) for v in box)
        np.testing.assert_array_equal(out, np.asarray(Image.fromarray(image).resize((8, 10), Image.BICUBIC, box=box)))
    with pytest.raises(ValueError, match="outside"):
        resample.resize_batch(images[:1], np.array([[0, 0, 10, 12]]), (8, 10))
    with pytest.raises(ValueError, match="empty"):
        resample.resize_batch(images[:1], np.array([[3, 0, 3, 12]]), (8, 10))
