"""``python -m benchmarks.gpu``: the dry run completes every part and writes a complete report;
the plan names every part's budget; the peak table; and, on a GPU, our logits there equal the CPU's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.gpu import LIMIT_S, PARTS, check_complete, plan_text
from benchmarks.gpu_parts.common import bf16_peak

ROOT = Path(__file__).resolve().parents[2]


def test_plan_names_every_part_and_fits_the_limit():
    text = plan_text(dry_run=False)
    for part in PARTS:
        assert f"{part.title}: budget {part.budget_s:.0f} s" in text
    assert sum(p.budget_s for p in PARTS) <= LIMIT_S < 8 * 60


def test_peaks_are_matched_by_name_and_unknown_gpus_get_none():
    assert bf16_peak("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert bf16_peak("NVIDIA H100 PCIe")[0] == 756e12
    assert bf16_peak("NVIDIA H200")[0] == 989e12
    assert bf16_peak("NVIDIA A100-SXM4-80GB")[0] == 312e12
    peak, rule = bf16_peak("Tesla V100-SXM2-16GB")
    assert peak is None and rule.startswith("unknown peak")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    stem = tmp_path_factory.mktemp("gpu") / "report"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # the tests' 8 host devices are not the command's
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--out", str(stem)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, stem


def test_dry_run_writes_a_complete_report(dry_run):
    proc, stem = dry_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(stem.with_suffix(".json").read_text())
    markdown = stem.with_suffix(".md").read_text()
    assert report["incomplete"] == [] and check_complete(report, markdown) == []
    assert [p.key for p in PARTS] == list(report["parts"])
    assert all(part["status"] == "ok" for part in report["parts"].values())
    training = [r for r in report["parts"]["training"]["records"] if r.get("engine") == "jax-bf16"]
    assert training and all(r["images_per_s"] > 0 and np.isfinite(r["first_losses"]).all() for r in training)
    assert "MFU = img/s x 6 x MACs" in markdown and "unknown peak" in markdown


def test_dry_run_timm_rows_or_a_reason(dry_run):
    proc, stem = dry_run
    report = json.loads(stem.with_suffix(".json").read_text())
    rows = report["parts"]["training"]["records"]
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        assert any("not installed" in r.get("skipped", "") for r in rows)
        return
    jax_rows = {r["model"]: r for r in rows if r["engine"] == "jax-bf16"}
    for r in rows:
        if r["engine"] == "timm-eager-amp":  # same weights, batch, loss and AdamW: the first loss agrees
            assert abs(r["first_losses"][0] - jax_rows[r["model"]]["first_losses"][0]) < 0.05


def test_incomplete_report_is_detected():
    report = {"dry_run": True, "parts": {}}
    problems = check_complete(report, "")
    assert any(p.startswith("environment: missing") for p in problems)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["DeiT_test_distilled_patch8_32", "TNT_test_patch16_32"])
def test_gpu_logits_equal_the_cpus_at_highest_precision(name):
    import jax

    import vitjax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        pytest.skip("no GPU among JAX's devices")
    cpu = jax.devices("cpu")[0]
    model = vitjax.create_model(name)
    x = np.random.RandomState(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    with jax.default_device(cpu):
        variables = jax.jit(model.init)(jax.random.key(0), x[:1])
    ref = np.asarray(jax.jit(model.apply)(variables, jax.device_put(x, cpu)))
    with jax.default_matmul_precision("float32"):
        out = np.asarray(jax.jit(model.apply)(jax.device_put(variables, gpus[0]), jax.device_put(x, gpus[0])))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
