"""What a run shows: progress lines, ``metrics.jsonl``, TensorBoard, ``config.json``, a PNG plot."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"


def is_chief() -> bool:
    return jax.process_index() == 0


class JsonlWriter:
    """``metrics.jsonl``: one JSON object per write, ``{"step", "kind", <values>}``."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, step: int, kind: str, values: dict[str, float]) -> None:
        record = {"step": int(step), "kind": kind, **{k: float(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """TensorBoard scalars (``<kind>/<name>``) through tensorboardX, which needs no TensorFlow.

    (clu's metric writers import TensorFlow on import, and training must work without it.)
    """

    def __init__(self, logdir: Path):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(logdir), flush_secs=30)

    def write(self, step: int, kind: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(f"{kind}/{name}", float(value), int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    """Everything a logged step writes: ``workdir/metrics.jsonl`` and TensorBoard summaries in
    ``workdir/tensorboard``. On processes other than 0 it writes nothing."""

    def __init__(self, workdir: Path):
        self._writers = (
            [JsonlWriter(workdir / METRICS_FILE), TensorBoardWriter(workdir / "tensorboard")] if is_chief() else []
        )

    def write(self, step: int, kind: str, values: dict[str, float]) -> None:
        for writer in self._writers:
            writer.write(step, kind, values)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


class Progress:
    """``step 120/500  loss 0.4311  lr 3.1e-04  4.20 steps/s  ETA 0:01:30``.

    The rate is that of the steps since the previous line (the first line's includes compiling the
    step), so it reads the loop's speed as it is now, not an average still carrying the compile
    time and every evaluation so far; the ETA is the steps left at that rate."""

    def __init__(self, total_steps: int, start_step: int, clock: Callable[[], float] = time.perf_counter):
        self.total, self.clock = total_steps, clock
        self._last_step, self._last_time = start_step, clock()

    def line(self, step: int, loss: float, lr: float) -> str:
        now = self.clock()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
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
    # A Figure of its own, no pyplot: nothing global changes (a notebook keeps its inline backend).
    from matplotlib.figure import Figure

    records = read_metrics(workdir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not train:
        return None
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
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
    return path
