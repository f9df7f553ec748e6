"""What a run shows: progress lines, ``metrics.jsonl``, TensorBoard, ``config.json``, a PNG plot."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"


def is_chief() -> bool:
    return jax.process_index() == 0


class MetricsWriter:
    """One JSON object per logged step in ``workdir/metrics.jsonl`` plus TensorBoard
    summaries (clu), written by process 0 only."""

    def __init__(self, workdir: Path):
        self.path = workdir / METRICS_FILE
        self._tensorboard = None
        if is_chief():
            from clu import metric_writers

            self._tensorboard = metric_writers.SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, kind: str, values: dict[str, float]) -> None:
        if not is_chief():
            return
        record = {"step": int(step), "kind": kind, **{k: float(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._tensorboard.write_scalars(int(step), {f"{kind}/{k}": float(v) for k, v in values.items()})
        self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


class Progress:
    """``step 120/500  loss 0.4311  lr 3.1e-04  4.20 steps/s  ETA 0:01:30``."""

    def __init__(self, total_steps: int, start_step: int):
        self.total, self.start, self.t0 = total_steps, start_step, time.perf_counter()

    def line(self, step: int, loss: float, lr: float) -> str:
        done = step - self.start
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        eta = datetime.timedelta(seconds=int((self.total - step) / rate)) if rate > 0 else "?"
        return f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.3g}  {rate:.2f} steps/s  ETA {eta}"


def write_config(workdir: Path, config) -> None:
    if is_chief():
        (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str) + "\n")


def read_metrics(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_curves(workdir: Path) -> Path | None:
    """Training loss and learning rate against step, and eval top-1/top-5 where measured."""
    if not is_chief():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not train:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="step")
    for key in ("top1", "top5"):
        axes[2].plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=key)
    axes[2].set(title="eval accuracy", xlabel="step", ylim=(0, 1))
    axes[2].legend()
    fig.tight_layout()
    path = workdir / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
