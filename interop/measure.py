"""What every measurement here shares: one wall-clock timer, one latency summary, one list
of software versions.

The parity report (:mod:`interop.parity`) and the benchmarks (``benchmarks/``) both time
predictors with :func:`call_times`, summarise with :func:`latency_summary` and record
:func:`versions`, so their numbers are taken the same way. This module imports nothing
heavy; the benchmarks import it, never the other way round.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# The packages whose versions a report records (absent ones are recorded as "not installed").
VERSIONED_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numpy",
    "paddlepaddle",
    "paddle2onnx",
    "onnxruntime",
    "torch",
    "timm",
)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Calls ``fn()`` once; returns its result and the wall time it took in seconds (``time.perf_counter``)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def call_times(fn: Callable[[], object], calls: int) -> list[float]:
    """The wall time in seconds of each of ``calls`` consecutive calls of ``fn()``."""
    return [timed(fn)[1] for _ in range(calls)]


def latency_summary(times_s: Sequence[float], batch: int) -> dict[str, float]:
    """Median, minimum and interquartile range of per-call times (ms), and images per second at the median."""
    if not times_s:
        raise ValueError("latency_summary: no timed calls")
    median = statistics.median(times_s)
    q1, _, q3 = statistics.quantiles(times_s, n=4, method="inclusive") if len(times_s) > 1 else (median, median, median)
    return {
        "median_ms": median * 1e3,
        "min_ms": min(times_s) * 1e3,
        "iqr_ms": (q3 - q1) * 1e3,
        "images_per_s": batch / median,
    }


def versions(packages: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Python's version and each package's installed version (``"not installed"`` when absent)."""
    found = {"python": sys.version.split()[0]}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_results(out_dir: str | os.PathLike, stem: str, report: dict, markdown: str) -> Path:
    """Writes ``<stem>.json`` (the report) and ``<stem>.md`` (its rendering) into ``out_dir``; returns the .md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    return out / f"{stem}.md"
