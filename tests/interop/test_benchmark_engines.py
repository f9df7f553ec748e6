"""The benchmark measures the engines a user deploys, configured as the parity report configures them.

``benchmarks.worker``'s Paddle Inference, ONNX Runtime and JAX engines are ``interop.deploy``'s
predictors built with ``create_predictor``'s options; both reports time them with one timer
(``interop.measure``) and record one list of versions.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks.worker import INFERENCE_ENGINES, PredictorEngine, deploy_predictor, images, make_engine, prepare
from interop.deploy import JaxPredictor, OnnxRuntimePredictor, PaddleInferencePredictor, create_predictor
from interop.measure import call_times, latency_summary, timed, versions
from vitjax.cpu_threads import process_cpus, xla_worker_threads
from vitjax.training.model_init import resolve_matmul

MODEL = "DeiT_test_patch8_32"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """What ``worker prepare`` leaves for the engines: weights, the Paddle export and its ONNX file."""
    out = tmp_path_factory.mktemp("bench") / MODEL
    prepare(MODEL, out)
    return out


def test_prepare_records_export_times_and_complexity(work):
    info = json.loads((work / "prepare.json").read_text())
    assert set(info) == {"export_paddle_s", "export_onnx_s", "macs", "params"}
    assert info["export_paddle_s"] > 0 and info["export_onnx_s"] > 0 and info["macs"] > 0 and info["params"] > 0
    assert (work / "state.npz").is_file() and (work / "model.onnx").is_file() and (work / "paddle").is_dir()


@pytest.mark.parametrize(
    "engine, backend, options",
    [
        ("paddle-inference", "paddle-cpu", {"model_dir": "paddle"}),
        ("onnxruntime", "onnxruntime", {"onnx_path": "model.onnx"}),
    ],
)
def test_engines_are_the_parity_reports_predictors_with_its_options(work, engine, backend, options):
    predictor = deploy_predictor(engine, MODEL, work, "cpu", threads=2)
    parity = create_predictor(backend, threads=2, **{k: work / v for k, v in options.items()})
    assert type(predictor) is type(parity) and type(predictor) in (PaddleInferencePredictor, OnnxRuntimePredictor)
    assert predictor.threads == parity.threads == 2
    assert getattr(predictor, "mkldnn", None) == getattr(parity, "mkldnn", None)
    x = images(3, predictor.img_size, seed=5)
    np.testing.assert_array_equal(predictor.predict(x), parity.predict(x))


def test_jax_engines_are_the_jax_predictor_in_float32_and_bfloat16_pinned_or_not(work):
    fp32 = deploy_predictor("jax", MODEL, work, "cpu", threads=2)
    bf16 = deploy_predictor("jax-bf16", MODEL, work, "cpu", threads=2)
    unpinned = deploy_predictor("jax-unpinned", MODEL, work, "cpu", threads=2)
    assert all(isinstance(p, JaxPredictor) for p in (fp32, bf16, unpinned))
    assert (fp32.dtype, bf16.dtype, unpinned.dtype) == ("float32", "bfloat16", "float32")
    assert bf16.matmul == "xla"  # what its bfloat16 layers run, whatever auto picks for float32
    x = images(2, fp32.img_size, seed=6)
    pinning_applies = sys.platform.startswith("linux") and jax.default_backend() == "cpu"
    free = unpinned.predict(x)
    if pinning_applies:
        assert all(os.sched_getaffinity(t) == set(process_cpus()) for t in xla_worker_threads())
    logits, low = fp32.predict(x), bf16.predict(x)
    assert logits.dtype == low.dtype == np.float32
    assert 0 < np.abs(logits - low).max() < 0.1  # bf16 compute: close to fp32, not equal
    np.testing.assert_array_equal(free, logits)  # pinning changes where threads run, not what they compute
    if pinning_applies:
        assert fp32.pinned_threads and all(os.sched_getaffinity(t) == {c} for t, c in fp32.pinned_threads.items())


def test_jax_engine_runs_the_predictor_s_default_matmuls_and_jax_xla_runs_xla_s(work):
    default = make_engine("jax", MODEL, work, "cpu", threads=2)
    xla = make_engine("jax-xla", MODEL, work, "cpu", threads=2)
    assert default.info == {"matmul": resolve_matmul("auto", num_devices=1)}  # onednn where the kernel builds
    assert xla.info == {"matmul": "xla"}
    x = images(3, default.img_size, seed=7)
    assert np.abs(default.predict(x) - xla.predict(x)).max() < 1e-5


def test_every_inference_engine_checks_against_the_exported_models(work):
    engines = {
        name: make_engine(name, MODEL, work, "cpu", threads=2) for name in ("jax", "paddle-inference", "onnxruntime")
    }
    assert all(isinstance(e, PredictorEngine) for e in engines.values())
    outputs = {name: np.asarray(e.check(2)) for name, e in engines.items()}
    assert outputs["jax"].shape == (2, 1000)
    for name in ("paddle-inference", "onnxruntime"):
        np.testing.assert_allclose(outputs[name], outputs["jax"], rtol=0, atol=1e-4, err_msg=name)


def test_unknown_engine_is_a_clear_error(work):
    with pytest.raises(ValueError, match="unknown engine 'tvm'; choose from jax, "):
        make_engine("tvm", MODEL, work, "cpu", threads=1)
    assert set(INFERENCE_ENGINES) >= {"jax", "paddle-inference", "onnxruntime", "timm"}


def test_worker_serves_an_engine_over_its_json_protocol(work):
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.worker", "serve", "onnxruntime", MODEL, str(work), "cpu", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )

    def ask(**msg):
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    try:
        hello = json.loads(proc.stdout.readline())
        assert hello["ok"] and hello["load_s"] > 0 and hello["rss"] > 0
        assert np.asarray(ask(cmd="check", batch=2)["output"]).shape == (2, 1000)
        assert ask(cmd="warmup", batch=1, n=2)["seconds"] > 0
        assert ask(cmd="time", batch=1)["seconds"] > 0
        memory = ask(cmd="memory")
        assert memory["maxrss"] >= memory["rss"] > 0 and memory["device_peak"] is None
        assert ask(cmd="fly") == {"ok": False, "error": "unknown command 'fly'"}
        assert ask(cmd="quit") == {"ok": True}
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_one_timer_and_one_summary():
    result, seconds = timed(lambda: sum(range(1000)))
    assert result == 499500 and seconds > 0
    assert len(call_times(lambda: None, 4)) == 4
    summary = latency_summary([0.004, 0.001, 0.002, 0.003, 0.010], batch=8)
    assert summary == pytest.approx({"median_ms": 3.0, "min_ms": 1.0, "iqr_ms": 2.0, "images_per_s": 8 / 0.003})
    assert latency_summary([0.5], batch=1) == {"median_ms": 500.0, "min_ms": 500.0, "iqr_ms": 0.0, "images_per_s": 2.0}
    with pytest.raises(ValueError, match="no timed calls"):
        latency_summary([], batch=1)


def test_versions_name_every_package_installed_or_not():
    found = versions(("numpy", "no-such-package-vitjax"))
    assert found["python"] == sys.version.split()[0]
    assert found["numpy"] == np.__version__ and found["no-such-package-vitjax"] == "not installed"
