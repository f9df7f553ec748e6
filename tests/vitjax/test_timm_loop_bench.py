"""``benchmarks.timm_loop`` measures our input pipeline and ``vitjax.main``'s loop beside timm's on one
JPEG folder, and reports the issue's two targets with a verdict (no timing thresholds here)."""

import json
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("skimage")

from benchmarks.timm_loop import loop_timing, main  # noqa: E402
from vitjax.hostmem import mimalloc_library  # noqa: E402


def test_steady_state_is_the_median_interval_and_the_mean_is_kept_beside_it():
    # steps 4..12 logged every 2 steps; the interval 6..8 paid for heap growth (a 4 s step)
    stamps = {1: 0.0, 2: 1.0, 4: 3.0, 6: 5.0, 8: 10.0, 10: 12.0, 12: 14.0}
    timing = loop_timing(stamps, warmup=4, steps=8, every=2)
    assert timing["interval_s_per_step"] == [1.0, 2.5, 1.0, 1.0]
    assert timing["s_per_step"] == 1.0
    assert timing["mean_s_per_step"] == pytest.approx(11.0 / 8)


def test_tiny_run_reports_every_row_and_both_targets(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the runs are separate processes: one CPU device, as a user has
    main(
        ["--batch", "4", "--images", "16", "--warmup", "2", "--steps", "2", "--log-every", "1", "--rounds", "1"]
        + ["--workers", "0", "2", "--seconds", "0.3", "--out", str(tmp_path)]
    )
    report = json.loads((tmp_path / "timm_loop.json").read_text())
    (batch,) = report["batches"]
    assert batch["batch"] == 4
    rows = [(row["side"], row["workers"]) for row in batch["pipeline"]]
    assert rows == [("ours", 0), ("ours", 2), ("timm", 0), ("timm", 2)]
    for row in batch["pipeline"]:
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
        assert row["images_per_s_per_core"] == pytest.approx(
            row["images_per_s"] / max(1, min(row["workers"], report["machine"]["cores"]))
        )
    with_mimalloc = mimalloc_library() is not None
    assert set(batch["loop"]) == {"ours", "timm"} | ({"timm-mimalloc"} if with_mimalloc else set())
    for side in batch["loop"].values():
        assert math.isfinite(side["images_per_s"]) and side["images_per_s"] > 0
        assert math.isfinite(side["mean_s_per_step"]) and side["mean_s_per_step"] > 0
        assert side["allocator"]
    for name, rounds in batch["raw"].items():
        if name.startswith("loop "):
            assert all(len(r["interval_s_per_step"]) == 2 for r in rounds)  # 2 timed steps, logged every step
    assert batch["loop"]["timm"]["allocator"] == "glibc"
    if with_mimalloc:
        assert batch["loop"]["timm-mimalloc"]["allocator"] == "mimalloc"
    assert "vitjax.main --config configs/deit_tiny.py" in batch["loop"]["ours"]["command"]
    targets = {t["what"]: t for t in batch["targets"]}
    context = {"end-to-end loop images/s, timm on mimalloc"} if with_mimalloc else set()
    assert (
        set(targets)
        == {
            "pipeline per core, 0 workers",
            "pipeline per core, 2 workers",
            "pipeline per core, best against best",
            "end-to-end loop images/s",
        }
        | context
    )
    assert targets["end-to-end loop images/s"]["target"] == 1.1
    assert targets["pipeline per core, 2 workers"]["target"] == 1.5
    assert all(t["verdict"] in ("pass", "fail") for name, t in targets.items() if name not in context)
    assert all(targets[name]["verdict"] == "(context)" and targets[name]["target"] is None for name in context)
    md = (tmp_path / "timm_loop.md").read_text()
    assert "| end-to-end loop images/s |" in md and "timm (processes)" in md
    assert "end-to-end loop images/s" in capsys.readouterr().out
