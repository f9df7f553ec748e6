"""Deployment backends behind one predictor interface, and the parity report.

Every backend that runs here must give the JAX model's outputs (fp32: max abs
difference <= 1e-4); one that cannot run here says why and is never replaced.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from testutil import TEST_SIZE, random_images

import interop
import vitjax
from interop.deploy import (
    BackendUnavailable,
    InputShapeError,
    JaxPredictor,
    OnnxRuntimePredictor,
    PaddleInferencePredictor,
    backend_status,
    create_predictor,
    gpu_status,
)
from interop.inference import InferenceModelError

ATOL = 1e-4


def init_variables(name: str, seed: int = 0):
    size = vitjax.get_spec(name).img_size
    return jax.jit(vitjax.create_model(name).init)(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Per test-size model: variables, an exported logits model and its ONNX conversion."""
    root = tmp_path_factory.mktemp("deployed")
    out = {}
    for i, name in enumerate(TEST_SIZE):
        variables = init_variables(name, seed=10 + i)
        model_dir = interop.export_inference_model(variables, name, root / name, softmax=False)
        out[name] = (variables, model_dir, interop.export_onnx(model_dir))
    return out


@pytest.mark.parametrize("name", TEST_SIZE)
def test_onnx_runtime_and_paddle_inference_give_the_jax_logits(deployed, name):
    variables, model_dir, onnx_path = deployed[name]
    reference = JaxPredictor(variables, name, softmax=False)
    backends = [OnnxRuntimePredictor(onnx_path, threads=2), PaddleInferencePredictor(model_dir, threads=2)]
    for batch in (1, 7):
        images = random_images(name, batch=batch, seed=20 + batch)
        expected = reference.predict(images)
        for predictor in backends:
            np.testing.assert_allclose(
                predictor.predict(images), expected, rtol=0, atol=ATOL, err_msg=predictor.backend
            )


@pytest.mark.slow
def test_onnx_runtime_gives_the_jax_probabilities_for_full_size_deit(tmp_path):
    name = "DeiT_tiny_patch16_224"
    variables = init_variables(name, seed=1)
    onnx_path = interop.export_onnx(interop.export_inference_model(variables, name, tmp_path / "m"))
    images = random_images(name, batch=2, seed=3)
    expected = JaxPredictor(variables, name).predict(images)
    np.testing.assert_allclose(OnnxRuntimePredictor(onnx_path).predict(images), expected, rtol=0, atol=ATOL)


def test_unavailable_backends_say_why_and_are_never_replaced(deployed):
    _, model_dir, _ = deployed["DeiT_test_patch8_32"]
    ok, reason = gpu_status()
    if ok:
        pytest.skip("a GPU is present: every Paddle backend may run here")
    for backend in ("paddle-gpu", "paddle-trt-fp32", "paddle-trt-fp16"):
        assert backend_status(backend) == (False, reason)
        with pytest.raises(BackendUnavailable, match=f"{backend}: unavailable: "):
            create_predictor(backend, model_dir=model_dir)
    with pytest.raises(ValueError, match="unknown backend"):
        backend_status("tensorflow")


def _cuda_skip_reason() -> str | None:
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        return f"paddlepaddle {paddle.__version__} is a CPU-only build (no CUDA)"
    if paddle.device.cuda.device_count() < 1:
        return "no CUDA GPU present"
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["paddle-gpu", "paddle-trt-fp32", "paddle-trt-fp16"])
def test_gpu_and_tensorrt_backends_give_the_jax_logits(deployed, backend):
    reason = _cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    ok, why = backend_status(backend)
    if not ok:
        pytest.skip(why)
    from interop.parity import TOLERANCES, precision_of

    name = "DeiT_test_distilled_patch8_32"
    variables, model_dir, _ = deployed[name]
    predictor = create_predictor(backend, model_dir=model_dir, max_batch=8)
    for batch in (1, 7):
        images = random_images(name, batch=batch, seed=batch)
        expected = JaxPredictor(variables, name, softmax=False).predict(images)
        atol = TOLERANCES[precision_of(backend)].logits
        np.testing.assert_allclose(predictor.predict(images), expected, rtol=0, atol=atol)


def test_tensorrt_fp16_keeps_layernorm_in_float32_and_caches_engines_next_to_the_model(tmp_path):
    """TNT loses accuracy with LayerNorm (or its skip-LayerNorm fusion) in half precision."""
    from interop.tensorrt import tensorrt_settings

    half = tensorrt_settings(tmp_path / "tnt", "fp16", img_size=224, max_batch=4)
    assert half.ops_kept_out == ("layer_norm",) and "trt_skip_layernorm_fuse_pass" in half.passes_deleted
    assert half.cache_dir == tmp_path / "tnt" / "_trt_cache"
    assert half.shapes() == ({"x": [1, 3, 224, 224]}, {"x": [4, 3, 224, 224]}, {"x": [1, 3, 224, 224]})
    assert "layer_norm" in half.describe() and "1..4" in half.describe()
    full = tensorrt_settings(tmp_path / "tnt", "fp32", img_size=224)
    assert full.ops_kept_out == () and full.passes_deleted == () and full.max_batch == 8
    with pytest.raises(ValueError, match="'int8'"):
        tensorrt_settings(tmp_path, "int8", img_size=224)


def test_backends_command_shows_the_tensorrt_settings():
    result = run_cli("backends")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    fp16 = lines[lines.index(next(line for line in lines if line.startswith("paddle-trt-fp16"))) + 1]
    assert "settings:" in fp16 and "kept out of TensorRT (float32): layer_norm" in fp16


def test_a_wrong_input_shape_is_a_clear_error_on_every_backend(deployed):
    name = "TNT_test_patch16_32"
    variables, model_dir, onnx_path = deployed[name]
    predictors = [JaxPredictor(variables, name), PaddleInferencePredictor(model_dir), OnnxRuntimePredictor(onnx_path)]
    bad = {
        "NHWC": np.zeros((2, 32, 32, 3), np.float32),
        "wrong size": np.zeros((2, 3, 48, 48), np.float32),
        "no batch axis": np.zeros((3, 32, 32), np.float32),
        "empty batch": np.zeros((0, 3, 32, 32), np.float32),
    }
    for predictor in predictors:
        for images in bad.values():
            with pytest.raises(InputShapeError, match=r"does not fit the model input \[N, 3, 32, 32\]"):
                predictor.predict(images)
        with pytest.raises(InputShapeError, match="dtype uint8"):
            predictor.predict(np.zeros((1, 3, 32, 32), np.uint8))


def test_onnx_export_refuses_a_legacy_directory_with_advice(tmp_path):
    name = "DeiT_test_patch8_32"
    model_dir = interop.export_inference_model(init_variables(name), name, tmp_path / "legacy", format="legacy")
    with pytest.raises(InferenceModelError, match="re-export as PIR"):
        interop.export_onnx(model_dir)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interop", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    name = "DeiT_test_distilled_patch8_32"
    path = tmp_path_factory.mktemp("weights") / f"{name}.pdparams"
    vitjax.save_pdparams(init_variables(name, seed=7), name, path)
    return path


def test_parity_command_checks_every_backend_and_writes_markdown_and_json(weights_file, tmp_path):
    result = run_cli("parity", str(weights_file), "--out", str(tmp_path / "report"), "--runs", "3")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    report = json.loads((tmp_path / "report" / "parity.json").read_text())
    markdown = (tmp_path / "report" / "parity.md").read_text()
    assert report["model"] == "DeiT_test_distilled_patch8_32" and report["passed"] is True
    for backend in ("jax", "paddle-cpu", "onnxruntime"):
        entry = report["backends"][backend]
        assert entry["available"] and entry["passed"]
        assert set(entry["inputs"]) == {"random", "photos"}
        for metrics in entry["inputs"].values():
            assert metrics["max_abs_logits"] <= ATOL and metrics["max_abs_probs"] <= ATOL
            assert metrics["top1_agreement"] == 1.0
        assert set(entry["latency"]) == {"1", "4", "8"}
        assert f"| {backend} | random |" in markdown
    for backend in ("paddle-gpu", "paddle-trt-fp32", "paddle-trt-fp16"):
        entry = report["backends"][backend]
        assert entry["available"] == backend_status(backend)[0]
        if not entry["available"]:
            assert f"- {backend}: {entry['reason']}" in markdown
    assert "## Latency" in markdown


def test_parity_command_exits_non_zero_when_a_backend_is_out_of_tolerance(weights_file, tmp_path):
    result = run_cli(
        "parity",
        str(weights_file),
        "--out",
        str(tmp_path),
        "--backends",
        "jax",
        "paddle-cpu",
        "--runs",
        "1",
        "--atol-logits",
        "1e-12",
        "--atol-probs",
        "1e-12",
    )
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    assert "paddle-cpu       FAILED" in result.stdout
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is False


def test_export_and_import_commands_round_trip_through_a_pdparams_file(weights_file, tmp_path):
    result = run_cli("export", str(weights_file), str(tmp_path / "model"), "--format", "legacy")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("import", str(tmp_path / "model"), str(tmp_path / "back.pdparams"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DeiT_test_distilled_patch8_32, legacy, softmax output" in result.stdout
    original, back = vitjax.read_pdparams(weights_file), vitjax.read_pdparams(tmp_path / "back.pdparams")
    assert list(original) == list(back) and all(np.array_equal(original[k], back[k]) for k in original)
    result = run_cli("import", str(tmp_path / "nowhere"), str(tmp_path / "x.pdparams"))
    assert result.returncode == 2 and "no such inference model directory" in result.stderr


def test_the_jax_predictor_pins_xla_workers_on_cpu_unless_told_not_to(deployed):
    """Pinned when the model first runs, one core each, process-wide; pinning changes where the
    workers run, not what they compute. (conftest frees the workers after every test.)"""
    from vitjax.cpu_threads import process_cpus, xla_worker_threads

    if not sys.platform.startswith("linux") or jax.default_backend() != "cpu":
        pytest.skip("pinning is for the CPU backend on Linux")
    name = TEST_SIZE[0]
    variables, images = deployed[name][0], random_images(name, batch=1, seed=3)
    every_cpu = set(process_cpus())

    def affinities():
        return {t: os.sched_getaffinity(t) for t in xla_worker_threads()}

    free = create_predictor("jax", variables=variables, model_name=name, pin_threads=False)
    expected = free.predict(images)
    assert free.pinned_threads == {}
    assert all(cpus == every_cpu for cpus in affinities().values())

    pinned = create_predictor("jax", variables=variables, model_name=name)
    assert all(cpus == every_cpu for cpus in affinities().values())  # nothing pinned before the model runs
    np.testing.assert_array_equal(pinned.predict(images), expected)
    assert set(pinned.pinned_threads) == set(xla_worker_threads()) != set()
    assert affinities() == {t: {cpu} for t, cpu in pinned.pinned_threads.items()}
    assert set(pinned.pinned_threads.values()) == set(sorted(every_cpu)[: len(pinned.pinned_threads)])
