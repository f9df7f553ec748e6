"""An exported model runs in PaddleClas's own deployment script, unchanged.

``deploy/python/predict_cls.py`` from the installed ``paddleclas==2.6.0`` wheel is run as
a subprocess on real photos with the shipped ``deploy/configs/inference_cls.yaml``; only
``-o`` overrides on its command line (model dir, photos, CPU, oneDNN, the test model's
resize/crop/mean/std) differ from a user's run. Its printed top-5 must be our JAX model's
top-5 on exactly the preprocessing the script applied (PaddleClas's own deploy ops).

Two things are not PaddleClas's defaults, both for outside reasons:

* The script imports ``paddleclas.deploy...``; the wheel's package ``__init__`` imports the
  whole training stack (prettytable, faiss, ...), which is not installed. A launcher
  registers an empty ``paddleclas`` package pointing at the wheel's directory (as
  tests/paddleclas_reference.py does) and runs the script with ``runpy``. The launcher
  also records what the script's post-process received and returned, because the script
  prints scores with two decimals only; that wrapper passes everything through unchanged.
* Paddle 3.3.1 runs predict_cls.py's settings (memory optim on) only on a legacy program
  with ``FLAGS_enable_pir_api=0`` (docs/deployment.md).
"""

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import numpy as np
import paddleclas_reference
import pytest
import skimage.data
import yaml
from PIL import Image

import interop
import vitjax

ATOL = 1e-4
TOPK = 5
PHOTOS = {"astronaut": skimage.data.astronaut, "chelsea": skimage.data.chelsea, "coffee": skimage.data.coffee}

LAUNCHER = r'''
"""Runs PaddleClas's predict_cls.py without its package __init__ (training stack not installed)."""
import importlib.machinery, pickle, runpy, sys, types
from pathlib import Path

package_dir, record_path, script = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
package = types.ModuleType("paddleclas")
package.__path__ = [str(package_dir)]
package.__spec__ = importlib.machinery.ModuleSpec("paddleclas", None, is_package=True)
package.__spec__.submodule_search_locations = [str(package_dir)]
sys.modules["paddleclas"] = package

import numpy as np
from paddleclas.deploy.python import postprocess

records = []
call = postprocess.PostProcesser.__call__

def recording_call(self, x, image_file=None):
    result = call(self, x, image_file)
    records.append((np.array(x), result))
    return result

postprocess.PostProcesser.__call__ = recording_call
sys.argv = [script] + sys.argv[4:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open(record_path, "wb") as f:
        pickle.dump(records, f)
'''

LINE = re.compile(
    r"^(?P<file>\S+):\s+class id\(s\): \[(?P<ids>[^\]]*)\], score\(s\): \[(?P<scores>[^\]]*)\], label_name\(s\): "
)


def paddleclas_dir() -> Path:
    return paddleclas_reference._ppcls_root().parent


def save_photos(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for name, load in PHOTOS.items():
        path = folder / f"{name}.jpg"
        Image.fromarray(load()).convert("RGB").save(path, quality=95)
        paths.append(path)
    return sorted(paths)


def preprocess_overrides(name: str) -> list[str]:
    """The test model's eval transform as ``-o`` overrides of the shipped config's PreProcess."""
    t = vitjax.get_spec(name).eval_transform
    ops = "PreProcess.transform_ops"
    return [
        f"{ops}.0.ResizeImage.resize_short={t.resize_short}",
        f"{ops}.0.ResizeImage.interpolation={t.interpolation}",
        f"{ops}.1.CropImage.size={t.crop_size}",
        f"{ops}.2.NormalizeImage.mean=[{','.join(map(str, t.mean))}]",
        f"{ops}.2.NormalizeImage.std=[{','.join(map(str, t.std))}]",
    ]


def script_preprocessing(name: str, photos: list[Path]) -> np.ndarray:
    """What predict_cls.py feeds its predictor: cv2.imread, BGR->RGB, then the config's ops
    (the shipped yaml with our overrides, built by PaddleClas's deploy preprocess module)."""
    config = yaml.safe_load((paddleclas_dir() / "deploy" / "configs" / "inference_cls.yaml").read_text())
    t = vitjax.get_spec(name).eval_transform
    ops = config["PreProcess"]["transform_ops"]
    ops[0]["ResizeImage"].update(resize_short=t.resize_short, interpolation=t.interpolation)
    ops[1]["CropImage"]["size"] = t.crop_size
    ops[2]["NormalizeImage"].update(mean=list(t.mean), std=list(t.std))
    transforms = paddleclas_reference.load_deploy_preprocess().create_operators(ops)
    images = []
    for path in photos:
        image = cv2.imread(str(path))[:, :, ::-1]
        for op in transforms:
            image = op(image)
        images.append(image)
    return np.stack(images)


def init_variables(name: str, seed: int):
    """Random weights with a spread-out head, so the top-5 is not decided by 1e-6 gaps."""
    model = vitjax.create_model(name, num_classes=1000)
    size = vitjax.get_spec(name).img_size
    variables = jax.jit(model.init)(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32))
    params = dict(variables["params"])
    head = dict(params["head"])
    head["kernel"] = jax.random.normal(jax.random.key(seed + 1), head["kernel"].shape) * 0.5
    params["head"] = head
    return {**variables, "params": params}


@pytest.mark.parametrize(
    ("name", "mkldnn"),
    [("TNT_test_patch16_32", True), ("DeiT_test_patch8_32", False)],
    ids=["TNT-onednn", "DeiT-no-onednn"],
)
def test_paddleclas_predict_cls_script_prints_the_jax_top5_for_our_export(name, mkldnn, tmp_path):
    variables = init_variables(name, seed=3)
    model_dir = interop.export_inference_model(variables, name, tmp_path / "model", softmax=True, format="legacy")
    photos = save_photos(tmp_path / "photos")
    (tmp_path / "launch_predict_cls.py").write_text(LAUNCHER)
    deploy = paddleclas_dir() / "deploy"
    command = [
        sys.executable,
        str(tmp_path / "launch_predict_cls.py"),
        str(paddleclas_dir()),
        str(tmp_path / "records.pkl"),
        "python/predict_cls.py",
        "-c",
        "configs/inference_cls.yaml",
        "-o",
        f"Global.inference_model_dir={model_dir}",
        "-o",
        f"Global.infer_imgs={tmp_path / 'photos'}",
        "-o",
        "Global.use_gpu=False",
        "-o",
        f"Global.enable_mkldnn={mkldnn}",
        "-o",
        "Global.cpu_num_threads=2",
        *[arg for override in preprocess_overrides(name) for arg in ("-o", override)],
    ]
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}
    result = subprocess.run(command, cwd=deploy, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # Our JAX model on exactly the script's preprocessing.
    images = script_preprocessing(name, photos)
    assert images.shape == (len(photos), 3, 32, 32)
    model = vitjax.create_model(name, num_classes=1000)
    logits = np.asarray(jax.jit(model.apply)(variables, np.ascontiguousarray(images.transpose(0, 2, 3, 1))))
    probs = np.asarray(jax.nn.softmax(logits, -1))
    expected_ids = np.argsort(-probs, axis=-1)[:, :TOPK]
    # Exact id equality is meaningful only if no two of the top 6 logits are within fp32 noise.
    gaps = -np.diff(np.take_along_axis(logits, np.argsort(-logits, -1)[:, : TOPK + 1], -1), axis=-1)
    assert gaps.min() > 1e-3, f"top-{TOPK} too close to call (logit gap {gaps.min():.2e})"

    # 1. What the script printed: file names in order, class ids exactly, 2-decimal scores.
    printed = [m.groupdict() for m in map(LINE.match, result.stdout.splitlines()) if m]
    assert [p["file"] for p in printed] == [p.name for p in photos], result.stdout[-3000:]
    for row, line in enumerate(printed):
        ids = [int(i) for i in line["ids"].split(",")]
        scores = [float(s) for s in line["scores"].split(",")]
        assert ids == expected_ids[row].tolist(), (line, expected_ids[row])
        np.testing.assert_allclose(scores, probs[row, ids], rtol=0, atol=0.005 + ATOL)

    # 2. What its post-process received (the predictor's raw output) and returned (5 decimals).
    with open(tmp_path / "records.pkl", "rb") as f:
        records = pickle.load(f)
    assert len(records) == len(photos)  # batch_size 1 in the shipped config
    for row, (output, topk) in enumerate(records):
        assert output.shape == (1, 1000)
        np.testing.assert_allclose(output[0], probs[row], rtol=0, atol=ATOL)
        assert topk[0]["class_ids"] == expected_ids[row].tolist()
        np.testing.assert_allclose(topk[0]["scores"], probs[row, expected_ids[row]], rtol=0, atol=ATOL)
