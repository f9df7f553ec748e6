"""Paddle inference models, both ways: what we export runs in Paddle Inference with the JAX
model's outputs, and what PaddleClas exports imports back to Flax with identical outputs.

fp32 bar: max abs difference <= 1e-4 on logits (and on probabilities, which softmax
cannot move further than the logits).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import paddle
import paddleclas_reference
import pytest
from testutil import TEST_SIZE, nhwc, random_images

import interop
import vitjax
from interop.deploy import PaddleInferencePredictor
from interop.inference import InferenceModelError, read_inference_model

ATOL = 1e-4
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "legacy"


def init_variables(name: str, seed: int = 0, num_classes: int = 1000):
    model = vitjax.create_model(name, num_classes=num_classes)
    size = vitjax.get_spec(name).img_size
    return jax.jit(model.init)(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32))


def jax_logits(name: str, variables, images_nchw: np.ndarray, num_classes: int = 1000) -> np.ndarray:
    model = vitjax.create_model(name, num_classes=num_classes)
    return np.asarray(jax.jit(model.apply)(variables, nhwc(images_nchw)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def leaves_equal(a, b) -> bool:
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    return [p for p, _ in flat_a] == [p for p, _ in flat_b] and all(
        np.array_equal(x, y) for (_, x), (_, y) in zip(flat_a, flat_b)
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every test-size model with random weights, exported as PIR (softmax and logits) and legacy."""
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for i, name in enumerate(TEST_SIZE):
        variables = init_variables(name, seed=i)
        dirs = {
            "pir": interop.export_inference_model(variables, name, root / f"{name}-pir"),
            "pir-logits": interop.export_inference_model(variables, name, root / f"{name}-logits", softmax=False),
            "legacy": interop.export_inference_model(variables, name, root / f"{name}-legacy", format="legacy"),
        }
        out[name] = (variables, dirs)
    return out


@pytest.mark.parametrize("mkldnn", [True, False], ids=["onednn", "no-onednn"])
@pytest.mark.parametrize("name", TEST_SIZE)
def test_exported_models_give_the_jax_outputs_in_paddle_inference_at_batch_1_and_7(exported, name, mkldnn):
    variables, dirs = exported[name]
    probs_predictor = PaddleInferencePredictor(dirs["pir"], mkldnn=mkldnn, threads=2)
    logits_predictor = PaddleInferencePredictor(dirs["pir-logits"], mkldnn=mkldnn, threads=2)
    legacy_predictor = PaddleInferencePredictor(dirs["legacy"], mkldnn=mkldnn, threads=2)
    for batch in (1, 7):
        images = random_images(name, batch=batch, seed=batch)
        logits = jax_logits(name, variables, images)
        assert logits_predictor.predict(images).shape == (batch, 1000)
        np.testing.assert_allclose(logits_predictor.predict(images), logits, rtol=0, atol=ATOL)
        np.testing.assert_allclose(probs_predictor.predict(images), softmax(logits), rtol=0, atol=ATOL)
        np.testing.assert_allclose(legacy_predictor.predict(images), softmax(logits), rtol=0, atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["TNT_small", "DeiT_tiny_patch16_224"])
def test_full_size_exports_give_the_jax_logits_in_paddle_inference(name, tmp_path):
    variables = init_variables(name, seed=5)
    logits_dir = interop.export_inference_model(variables, name, tmp_path / "logits", softmax=False)
    probs_dir = interop.export_inference_model(variables, name, tmp_path / "probs")
    images = random_images(name, batch=7, seed=3)
    logits = jax_logits(name, variables, images)
    for mkldnn in (True, False):
        predictor = PaddleInferencePredictor(logits_dir, mkldnn=mkldnn, threads=2)
        np.testing.assert_allclose(predictor.predict(images[:1]), logits[:1], rtol=0, atol=ATOL)
        np.testing.assert_allclose(predictor.predict(images), logits, rtol=0, atol=ATOL)
    probs = PaddleInferencePredictor(probs_dir, threads=2).predict(images)
    np.testing.assert_allclose(probs, softmax(logits), rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind", ["pir", "pir-logits", "legacy"])
@pytest.mark.parametrize("name", TEST_SIZE)
def test_our_exports_import_back_to_the_same_variables_without_a_model_name(exported, name, kind):
    variables, dirs = exported[name]
    imported = read_inference_model(dirs[kind])
    assert imported.model_name == name
    assert imported.softmax is (kind != "pir-logits")
    assert imported.format == ("legacy" if kind == "legacy" else "pir")
    assert leaves_equal(imported.variables, variables)


class PaddleClasStyleExport(paddle.nn.Layer):
    """PaddleClas's export wrapper as its engine builds it: ``base_model`` then a softmax."""

    def __init__(self, base_model):
        super().__init__()
        self.base_model = base_model
        self.out_act = paddle.nn.Softmax(axis=-1)

    def forward(self, x):
        return self.out_act(self.base_model(x))


@pytest.mark.parametrize("name", TEST_SIZE)
def test_a_model_exported_by_paddleclas_code_imports_back_with_identical_outputs(name, tmp_path):
    model = paddleclas_reference.build_from_arch(vitjax.get_spec(name))
    wrapper = PaddleClasStyleExport(model)
    wrapper.eval()
    size = vitjax.get_spec(name).img_size
    static = paddle.jit.to_static(wrapper, input_spec=[paddle.static.InputSpec([None, 3, size, size], "float32")])
    paddle.jit.save(static, str(tmp_path / "inference"))  # Paddle 3.3: inference.json + .pdiparams

    variables = interop.load_inference_model(tmp_path)
    assert leaves_equal(
        variables, vitjax.state_dict_to_variables({k: v.numpy() for k, v in model.state_dict().items()}, name)
    )
    images = random_images(name, batch=3, seed=4)
    with paddle.no_grad():
        reference = model(paddle.to_tensor(images)).numpy()
    np.testing.assert_allclose(jax_logits(name, variables, images), reference, rtol=0, atol=ATOL)


@pytest.mark.parametrize("with_info", [True, False], ids=["with-info", "without-info"])
@pytest.mark.parametrize("name", TEST_SIZE)
def test_legacy_models_exported_by_paddleclas_with_paddle_2_6_import_with_identical_outputs(name, with_info, tmp_path):
    model_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, model_dir)
    if not with_info:
        (model_dir / "inference.pdiparams.info").unlink()
    expected = np.load(model_dir / "expected.npz")
    imported = read_inference_model(model_dir)
    assert (imported.model_name, imported.format, imported.softmax, imported.num_classes) == (name, "legacy", True, 10)

    state = vitjax.variables_to_state_dict(imported.variables, name)
    assert list(state) == list(expected["weight_keys"])
    sums = np.array([[v.astype(np.float64).sum(), (v.astype(np.float64) ** 2).sum()] for v in state.values()])
    np.testing.assert_allclose(sums, expected["weight_sums"], rtol=1e-12, atol=1e-12)
    logits = jax_logits(name, imported.variables, expected["images"], num_classes=10)
    np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(
        PaddleInferencePredictor(model_dir).predict(expected["images"]), expected["probs"], rtol=0, atol=ATOL
    )


def test_legacy_export_runs_under_paddleclas_deploy_settings_with_pir_switched_off(exported, tmp_path):
    """PaddleClas's deploy predictor: Config(dir, "inference"), oneDNN, IR optim, memory optim,
    no feed/fetch ops. Paddle 3.3 resolves a legacy directory that way only with PIR off."""
    name = "TNT_test_patch16_32"
    variables, dirs = exported[name]
    images = random_images(name, batch=2, seed=9)
    np.save(tmp_path / "images.npy", images)
    script = f"""
import numpy as np
from paddle import inference
config = inference.Config({str(dirs["legacy"])!r}, "inference")
config.disable_gpu(); config.set_mkldnn_cache_capacity(10); config.enable_mkldnn()
config.set_cpu_math_library_num_threads(2); config.disable_glog_info(); config.switch_ir_optim(True)
config.enable_memory_optim(); config.switch_use_feed_fetch_ops(False)
predictor = inference.create_predictor(config)
x = np.load({str(tmp_path / "images.npy")!r})
handle = predictor.get_input_handle(predictor.get_input_names()[0]); handle.reshape(x.shape); handle.copy_from_cpu(x)
predictor.run()
np.save({str(tmp_path / "out.npy")!r}, predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu())
"""
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), softmax(jax_logits(name, variables, images)), rtol=0, atol=ATOL
    )


def test_exports_take_pdparams_files_and_refuse_to_overwrite(exported, tmp_path):
    name = "DeiT_test_patch8_32"
    variables, _ = exported[name]
    weights = tmp_path / "w.pdparams"
    vitjax.save_pdparams(variables, name, weights)
    out = interop.export_inference_model(weights, None, tmp_path / "model")  # the model is guessed from the file
    assert sorted(p.name for p in out.iterdir()) == ["inference.json", "inference.pdiparams"]
    with pytest.raises(InferenceModelError, match="already exists"):
        interop.export_inference_model(weights, None, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "w.pdparams"]  # no leftovers


def test_a_failed_export_leaves_no_directory_behind(exported, tmp_path):
    variables, _ = exported["DeiT_test_patch8_32"]
    with pytest.raises(vitjax.WeightMismatchError):
        interop.export_inference_model(variables, "TNT_test_patch16_32", tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_or_files_are_clear_errors(exported, tmp_path):
    with pytest.raises(InferenceModelError, match="no such inference model directory"):
        interop.load_inference_model(tmp_path / "nope")
    with pytest.raises(InferenceModelError, match="not a Paddle inference model directory"):
        interop.load_inference_model(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(exported["DeiT_test_patch8_32"][1]["pir"], broken)
    (broken / "inference.pdiparams").unlink()
    with pytest.raises(InferenceModelError, match=r"inference\.pdiparams: missing"):
        interop.load_inference_model(broken)


@pytest.mark.parametrize("kind", ["pir", "legacy"])
def test_a_truncated_pdiparams_is_a_clear_error(exported, tmp_path, kind):
    model_dir = tmp_path / "m"
    shutil.copytree(exported["TNT_test_patch16_32"][1][kind], model_dir)
    params = model_dir / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[:-1000])
    with pytest.raises(InferenceModelError, match=r"inference\.pdiparams: truncated or corrupt"):
        interop.load_inference_model(model_dir)
    if kind == "pir":
        with pytest.raises(InferenceModelError, match="truncated or corrupt"):
            interop.export_onnx(model_dir)


def test_a_directory_of_another_architecture_is_refused(exported):
    _, dirs = exported["TNT_test_patch16_32"]
    with pytest.raises(InferenceModelError, match="do not fit DeiT_test_patch8_32"):
        interop.load_inference_model(dirs["pir"], "DeiT_test_patch8_32")


def test_an_unknown_graph_is_refused_rather_than_mapped_to_a_wrong_model(tmp_path):
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3), paddle.nn.Flatten(), paddle.nn.Linear(8 * 30 * 30, 10))
    net.eval()
    paddle.jit.save(
        paddle.jit.to_static(net, input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32", "x")]),
        str(tmp_path / "inference"),
    )
    with pytest.raises(InferenceModelError, match="fit no registered DeiT/TNT model"):
        interop.load_inference_model(tmp_path)


def test_importing_interop_does_not_import_paddle():
    code = "import sys, interop; interop.export_inference_model; print('paddle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-1000:]
