"""The benchmark report says what our JAX columns are, naming only the variants that ran."""

import json
from pathlib import Path

import pytest

from benchmarks.report import render_markdown

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def jax_path_line(report_file: Path) -> str:
    markdown = render_markdown(json.loads(report_file.read_text()))
    return next(line for line in markdown.splitlines() if line.startswith("- Our JAX path"))


@pytest.mark.skipif(not (RESULTS / "latest.json").exists(), reason="the recorded benchmark runs are not in this tree")
def test_report_describes_only_the_jax_variants_that_ran():
    # a run with the unpinned and bf16 variants, on XLA's matmuls
    full = jax_path_line(RESULTS / "latest.json")
    assert '"threads unpinned" is the same with `pin_threads=False`' in full
    assert "bf16 computes in bfloat16" in full
    assert "512-bit vectors" not in full
    # a run with the default predictor and XLA's matmuls beside it, nothing else of ours
    short = jax_path_line(RESULTS.parent / "studies" / "results" / "inference" / "fused_attention" / "latest.json")
    assert "threads unpinned" not in short and "bf16" not in short and "512-bit" not in short
    assert "each block's attention is one fused call" in short
    assert '"XLA\'s matmuls" is the same predictor with `matmul="xla"`' in short
