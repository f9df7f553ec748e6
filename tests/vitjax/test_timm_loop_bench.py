"""``benchmarks.timm_loop`` measures our input pipeline and ``vitjax.main``'s loop beside timm's on one
JPEG folder, and reports the issue's two targets with a verdict (no timing thresholds here)."""

import json
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("skimage")

from benchmarks.timm_loop import main  # noqa: E402


def test_tiny_run_reports_every_row_and_both_targets(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the runs are separate processes: one CPU device, as a user has
    main(
        ["--batch", "4", "--images", "16", "--warmup", "2", "--steps", "2", "--rounds", "1"]
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
    assert set(batch["loop"]) == {"ours", "timm"}
    for side in batch["loop"].values():
        assert math.isfinite(side["images_per_s"]) and side["images_per_s"] > 0
        assert side["allocator"]
    assert "vitjax.main --config configs/deit_tiny.py" in batch["loop"]["ours"]["command"]
    targets = {t["what"]: t for t in batch["targets"]}
    assert set(targets) == {
        "pipeline per core, 0 workers",
        "pipeline per core, 2 workers",
        "pipeline per core, best against best",
        "end-to-end loop images/s",
    }
    assert targets["end-to-end loop images/s"]["target"] == 1.1
    assert targets["pipeline per core, 2 workers"]["target"] == 1.5
    assert all(t["verdict"] in ("pass", "fail") for t in targets.values())
    md = (tmp_path / "timm_loop.md").read_text()
    assert "| end-to-end loop images/s |" in md and "timm (processes)" in md
    assert "end-to-end loop images/s" in capsys.readouterr().out
