"""``python -m vitjax.main --config.mode=explain``: one PNG per image (the eval crop, the class
token's attention rollout over it, the top-k classes), from any weights ``predict`` takes; a bad
image stops the run with one line and no PNG."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image

import vitjax
from vitjax.explain import draw, explain, heat_overlay
from vitjax.training.config import base_config

MODEL = "DeiT_test_patch8_32"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random weights of the test-size DeiT with a 10-class head, as a .pdparams file."""
    path = tmp_path_factory.mktemp("weights") / "w.pdparams"
    model = vitjax.create_model(MODEL, num_classes=10)
    vitjax.save_pdparams(model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32)), MODEL, path)
    return path


def _photos(folder: Path) -> list[Path]:
    paths = []
    for name, array in (("chelsea", skimage.data.chelsea()), ("coffee", skimage.data.coffee())):
        paths.append(folder / f"{name}.jpg")
        Image.fromarray(array).save(paths[-1])
    return paths


def _config(weights: Path, images: list[Path], topk: int = 5):
    c = base_config()
    c.model.update(name=MODEL, num_classes=10, matmul="xla")
    c.data.source = "digits"
    c.init.pdparams = str(weights)
    c.predict.update(images=",".join(map(str, images)), topk=topk)
    return c


def test_one_png_per_image_with_the_photo_the_heat_map_and_the_top_classes(tmp_path, weights):
    images = _photos(tmp_path)
    written = explain(_config(weights, images, topk=3), tmp_path / "run")
    assert written == [tmp_path / "run" / "explain" / "chelsea.png", tmp_path / "run" / "explain" / "coffee.png"]
    for path in written:
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size == (1200, 400)
            assert np.asarray(png.convert("L")).std() > 10  # a picture, not a blank canvas
    assert sorted(os.listdir(tmp_path / "run" / "explain")) == ["chelsea.png", "coffee.png"]  # no partial files


def test_two_images_with_one_name_get_two_pngs(tmp_path, weights):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    array = skimage.data.chelsea()
    for folder in ("a", "b"):
        Image.fromarray(array).save(tmp_path / folder / "cat.png")
    written = explain(_config(weights, [tmp_path / "a" / "cat.png", tmp_path / "b" / "cat.png"]), tmp_path / "run")
    assert [p.name for p in written] == ["cat.png", "cat_2.png"]


def test_heat_map_is_scaled_to_its_maximum_and_to_the_crop():
    heat = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)
    overlay = heat_overlay(heat, 32)
    assert overlay.shape == (32, 32) and overlay.max() == pytest.approx(1.0, abs=0.02)
    assert overlay[-1, -1] > overlay[0, 0]
    figure = draw(np.zeros((32, 32, 3), np.uint8), heat, [("a", 0.7), ("b", 0.2)], "title")
    assert len(figure.axes) == 4  # photo, overlay, bars, colour bar


def test_an_unreadable_image_is_one_line_exit_1_and_no_png(tmp_path, weights):
    good, _ = _photos(tmp_path)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    cmd = [sys.executable, "-m", "vitjax.main", "--workdir", str(tmp_path / "run"), "--config.mode=explain"]
    cmd += [f"--config.init.pdparams={weights}", f"--config.predict.images={good},{bad}"]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: cannot decode image (cannot identify image file '{bad}')"], result.stderr[-2000:]
    assert not (tmp_path / "run" / "explain").exists() or not os.listdir(tmp_path / "run" / "explain")


def test_explain_without_images_says_what_it_needs(tmp_path, weights):
    with pytest.raises(ValueError, match="mode=explain needs predict.images"):
        explain(_config(weights, []), tmp_path / "run")
