"""ONNX straight from the JAX model (jax2onnx, ``interop onnx --from jax``), with no Paddle.

Parity: ONNX Runtime (CPU) against the same JAX function in fp32, max abs logit difference
<= 1e-5 on real photos at batch 1 and at the whole photo batch from the same file, for every
registered model (full-size ones are ``slow``); every file passes ``onnx.checker``'s full check.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from testutil import TEST_SIZE, model_params

import vitjax
from interop.deploy import OnnxRuntimePredictor, create_predictor
from interop.errors import InferenceModelError
from interop.parity import default_photos, photo_batch, run_parity

pytest.importorskip("jax2onnx")
onnx = pytest.importorskip("onnx")

from interop.onnx_from_jax import (  # noqa: E402  (after the skip: jax2onnx is the onnx extra)
    METADATA_KEYS,
    _version,
    export_onnx_from_jax,
    needs_per_image_loop,
    read_onnx_metadata,
)

PARITY_ATOL = 1e-5
NAME = "DeiT_test_distilled_patch8_32"


def init_variables(name: str, seed: int = 0):
    size = vitjax.get_spec(name).img_size
    return jax.jit(vitjax.create_model(name).init)(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32))


def jax_logits(variables, name: str, images_nchw: np.ndarray) -> np.ndarray:
    """The reference: our model in fp32 on XLA's matmuls, jitted."""
    model = vitjax.create_model(name, matmul="xla")
    return np.asarray(jax.jit(lambda x: model.apply(variables, x))(images_nchw.transpose(0, 2, 3, 1)))


@pytest.fixture(scope="module")
def photos():
    photos = default_photos()
    if not photos:
        pytest.skip("scikit-image (sample photos) is not installed")
    return photos


@pytest.mark.parametrize("name", model_params([*TEST_SIZE, *vitjax.list_models()], slow_unless=()))
def test_onnx_runtime_gives_the_jax_logits_on_photos_at_batch_1_and_4(name, photos, tmp_path):
    variables = init_variables(name, seed=3)
    path = export_onnx_from_jax(variables, tmp_path / f"{name}.onnx", name, softmax=False)
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    (x,) = graph.input
    assert x.name == "x" and [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim][0] == "N"
    images = photo_batch(photos, name)
    predictor = OnnxRuntimePredictor(path, threads=1, backend="onnxruntime-jax")
    for batch in (1, len(images)):
        got, want = predictor.predict(images[:batch]), jax_logits(variables, name, images[:batch])
        assert got.shape == want.shape == (batch, 1000)
        assert float(np.abs(got - want).max()) <= PARITY_ATOL, batch
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_the_default_file_outputs_probabilities_and_says_what_it_holds(tmp_path):
    variables = init_variables("TNT_test_patch16_32", seed=1)
    path = export_onnx_from_jax(variables, tmp_path / "tnt.onnx", "TNT_test_patch16_32")
    meta = read_onnx_metadata(path)
    assert set(meta) == set(METADATA_KEYS)
    assert meta["vitjax.model"] == "TNT_test_patch16_32" and meta["vitjax.output"] == "probabilities"
    assert meta["vitjax.img_size"] == "32" and meta["vitjax.num_classes"] == "1000"
    assert json.loads(meta["vitjax.eval_transform"])["mean"] == [0.5, 0.5, 0.5]
    assert meta["vitjax.batch"] == ("per-image loop" if needs_per_image_loop("TNT_test_patch16_32") else "batched")
    images = np.random.RandomState(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    probs = create_predictor("onnxruntime-jax", onnx_path=path).predict(images)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    want = jax.nn.softmax(jax_logits(variables, "TNT_test_patch16_32", images), axis=-1)
    assert float(np.abs(probs - want).max()) <= PARITY_ATOL


def test_cli_writes_the_file_without_importing_paddle_or_tensorflow(tmp_path):
    weights, out = tmp_path / "w.pdparams", tmp_path / "model.onnx"
    vitjax.save_pdparams(init_variables(NAME, seed=2), NAME, weights)
    # The whole CLI path in a fresh interpreter; then what it imported.
    script = (
        "import json, runpy, sys\n"
        f"sys.argv = ['interop', 'onnx', '--from', 'jax', {str(weights)!r}, {str(out)!r}]\n"
        "try:\n    runpy.run_module('interop', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print(json.dumps({'code': code, 'modules': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, result.stderr[-3000:]
    assert f"-> {out} (jax2onnx, softmax probabilities)" in result.stdout
    for foreign in ("paddle", "paddle2onnx", "tensorflow", "tensorflow_datasets", "torch"):
        assert foreign not in report["modules"], foreign
    assert "jax2onnx" in report["modules"] and read_onnx_metadata(out)["vitjax.model"] == NAME


def test_a_model_the_converter_cannot_express_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    if _version("jax2onnx") >= (0, 12):
        pytest.skip("this jax2onnx expresses TNT's batch-folding reshapes")
    import interop.onnx_from_jax as module

    # jax2onnx 0.11.2 cannot lower TNT with a symbolic batch folded into its patches (16*N).
    monkeypatch.setattr(module, "needs_per_image_loop", lambda name: False)
    out = tmp_path / "tnt.onnx"
    with pytest.raises(InferenceModelError) as error:
        export_onnx_from_jax(init_variables("TNT_test_patch16_32"), out, "TNT_test_patch16_32")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{out}: jax2onnx cannot express TNT_test_patch16_32")
    assert list(tmp_path.iterdir()) == []


def test_tnt_on_jax_0_12_with_jax2onnx_0_11_is_refused_with_the_reason(tmp_path, monkeypatch):
    if _version("jax2onnx") >= (0, 12):
        pytest.skip("only jax2onnx < 0.12 needs the per-image loop")
    import interop.onnx_from_jax as module

    real = module._version
    monkeypatch.setattr(module, "_version", lambda d: (0, 12) if d == "jax" else real(d))
    out = tmp_path / "tnt.onnx"
    with pytest.raises(
        InferenceModelError, match=rf"^{out}: jax2onnx 0.11 cannot express TNT_test_patch16_32 on JAX >= 0.12"
    ):
        export_onnx_from_jax(init_variables("TNT_test_patch16_32"), out, "TNT_test_patch16_32")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(InferenceModelError, match="already exists"):
        export_onnx_from_jax(init_variables(NAME), out, NAME)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(InferenceModelError, match="does not exist"):
        export_onnx_from_jax(init_variables(NAME), tmp_path / "missing" / "m.onnx", NAME)


def test_parity_report_takes_the_file_and_exports_no_paddle_model(tmp_path, photos):
    report = run_parity(
        init_variables(NAME, seed=4),
        tmp_path,
        NAME,
        backends=["jax", "onnxruntime-jax"],
        photos=photos,
        latency_batches=(1, 2),
        latency_runs=2,
    )
    entry = report["backends"]["onnxruntime-jax"]
    assert report["passed"] and entry["passed"] and report["shipped_model_dir"] is None
    assert all(m["max_abs_logits"] <= PARITY_ATOL for m in entry["inputs"].values())
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["jax2onnx_logits.onnx", "jax2onnx_probs.onnx"]


def test_the_server_answers_from_the_file_with_the_offline_top5(tmp_path, photos):
    pytest.importorskip("uvicorn")
    from test_serving import assert_same_top5, offline_top5, png, serving

    from interop.serving import ServeConfig, load_served_model
    from interop.serving.client import Client

    variables = init_variables(NAME, seed=3)
    path = export_onnx_from_jax(variables, tmp_path / "served.onnx", NAME)
    with pytest.raises(InferenceModelError, match="runs on --backend onnxruntime-jax"):
        load_served_model(path, "paddle-cpu")
    model = load_served_model(path, "onnxruntime-jax", threads=1, max_batch_size=4)
    assert model.name == NAME and model.outputs_probabilities and model.num_classes == 1000
    with serving(model, ServeConfig(max_batch_size=4)) as url:
        assert_same_top5(
            Client(url).classify([png(image) for _, image in photos]), offline_top5(variables, NAME, photos)
        )
