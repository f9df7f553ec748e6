"""The ``jax.export`` artifact behind the deploy predictors, the parity report, ``interop serve`` and the CLI.

The artifact's own tests (bit-exactness, the version window, the loader without model code)
are in ``tests/vitjax/test_jax_artifact.py``, where the core environment runs them.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import vitjax
from interop.deploy import InputShapeError, create_predictor
from interop.errors import InferenceModelError
from interop.jax_artifact import export_jax_artifact, read_sidecar
from interop.parity import default_photos, run_parity

NAME = "DeiT_test_distilled_patch8_32"


def init_variables(name: str, seed: int = 0):
    size = vitjax.get_spec(name).img_size
    return jax.jit(vitjax.create_model(name).init)(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    variables = init_variables(NAME, seed=3)
    return variables, export_jax_artifact(variables, tmp_path_factory.mktemp("artifact") / "m.jaxexport", NAME)


def test_predictor_takes_nchw_and_gives_the_jax_logits_bit_exact(artifact):
    variables, path = artifact
    model = vitjax.create_model(NAME, matmul="xla")
    images = np.random.RandomState(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    want = np.asarray(jax.jit(lambda x: model.apply(variables, x))(images.transpose(0, 2, 3, 1)))
    predictor = create_predictor("jax-export", artifact_path=path, softmax=False, max_batch=None)
    assert predictor.img_size == 32 and predictor.model_name == NAME
    np.testing.assert_array_equal(predictor.predict(images), want)
    probs = create_predictor("jax-export", artifact_path=path, softmax=True).predict(images)
    np.testing.assert_allclose(probs, jax.nn.softmax(want, axis=-1), rtol=0, atol=1e-6)


def test_predictor_errors_name_the_file(artifact, tmp_path):
    variables, path = artifact
    predictor = create_predictor("jax-export", artifact_path=path, max_batch=2)
    with pytest.raises(
        InputShapeError, match=rf"^{path}: jax-export: batch of 3 exceeds the engine's maximum batch 2$"
    ):
        predictor.predict(np.zeros((3, 3, 32, 32), np.float32))
    tpu = export_jax_artifact(variables, tmp_path / "tpu.jaxexport", NAME, platforms=["tpu"])
    with pytest.raises(InferenceModelError, match=rf"^{tpu}: lowered for tpu, not for this machine's cpu$"):
        create_predictor("jax-export", artifact_path=tpu)


def test_parity_report_takes_the_artifact(tmp_path):
    report = run_parity(
        init_variables(NAME, seed=4),
        tmp_path,
        NAME,
        backends=["jax", "jax-export"],
        latency_batches=(1,),
        latency_runs=2,
    )
    entry = report["backends"]["jax-export"]
    assert report["passed"] and entry["passed"] and report["shipped_model_dir"] is None
    assert all(m["max_abs_logits"] <= 1e-4 and m["top1_agreement"] == 1.0 for m in entry["inputs"].values())


def test_the_server_answers_from_the_artifact_with_the_offline_top5(artifact):
    pytest.importorskip("uvicorn")
    from test_serving import assert_same_top5, offline_top5, png, serving

    from interop.serving import ServeConfig, load_served_model
    from interop.serving.client import Client

    variables, path = artifact
    photos = default_photos()
    if not photos:
        pytest.skip("scikit-image (sample photos) is not installed")
    with pytest.raises(InferenceModelError, match="runs on --backend jax-export"):
        load_served_model(path, "onnxruntime")
    # 3: the server pads batches to 4 (one compile per power of two), above its own maximum
    model = load_served_model(path, "jax-export", threads=1, max_batch_size=3)
    assert model.name == NAME and not model.outputs_probabilities and model.transform.crop_size == 32
    with serving(model, ServeConfig(max_batch_size=3)) as url:
        assert_same_top5(
            Client(url).classify([png(image) for _, image in photos]), offline_top5(variables, NAME, photos)
        )


def test_cli_writes_the_artifact_without_importing_paddle_or_tensorflow(tmp_path):
    weights, out = tmp_path / "w.pdparams", tmp_path / "m.jaxexport"
    vitjax.save_pdparams(init_variables(NAME, seed=2), NAME, weights)
    script = (
        "import json, runpy, sys\n"
        f"sys.argv = ['interop', 'jax-export', {str(weights)!r}, {str(out)!r}, '--max-batch', '16']\n"
        "try:\n    runpy.run_module('interop', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print(json.dumps({'code': code, 'modules': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, result.stderr[-3000:]
    assert f"-> {out} + m.jaxexport.json (cpu, cuda, tpu)" in result.stdout
    assert not {"paddle", "paddle2onnx", "tensorflow"} & set(report["modules"])
    meta = read_sidecar(out)
    assert meta["model"] == NAME and meta["max_batch"] == 16
    again = subprocess.run(
        [sys.executable, "-m", "interop", "jax-export", str(weights), str(out)], capture_output=True, text=True
    )
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: {out}: already exists; refusing to overwrite (pass overwrite=True / --overwrite)"
    )
