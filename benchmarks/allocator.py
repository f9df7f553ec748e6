"""The training step under each host allocator, side by side in one run: glibc as it comes, glibc kept, tcmalloc.

``python -m benchmarks.allocator`` prepares each model's weights once, then starts one
training worker (``benchmarks.worker``, the same engines as ``benchmarks.run``) per variant and
times their steps in interleaved rounds, so a busy moment of the machine hits every variant alike:

* ``jax / glibc``: vitjax's step on glibc's malloc as it comes (``VITJAX_MALLOC=system``);
* ``jax / glibc kept``: glibc told to keep freed buffers (:func:`vitjax.hostmem.keep_freed_memory`),
  no preload: what ``python -m vitjax.main`` runs where mimalloc is not installed, and what a
  user's own loop gets from ``vitjax.keep_freed_memory()``;
* ``jax / mimalloc``: what ``python -m vitjax.main`` runs on a CPU host: the ``cmeel-mimalloc``
  wheel's library preloaded, large blocks kept in its arenas, memory free for a second handed back
  to the kernel lazily (:func:`vitjax.hostmem.preload_allocator`); ``jax / mimalloc kept`` keeps
  every freed page resident instead (the setting before 2026-12-07), ``jax / mimalloc huge pages``
  adds transparent huge pages (measured, not the default);
* ``jax / tcmalloc``: ``LD_PRELOAD`` of tcmalloc (where installed);
* ``timm / glibc`` and ``timm / tcmalloc``: timm's DeiT/TNT with the same AdamW, the peer.

Images/s are medians over the rounds; ratios are to ``timm / glibc``, what a ``pip install`` user
of PyTorch gets. Results: ``benchmarks/results/allocator.{json,md}`` with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.run import ROOT, Worker, WorkerError, _log, _prepare
from vitjax.hostmem import MIMALLOC_SETTINGS, mimalloc_library, tcmalloc_library

OUT = ROOT / "benchmarks" / "results"


def variants() -> dict[str, tuple[str, dict[str, str]]]:
    """label -> (worker engine, extra environment)."""
    out = {
        "jax / glibc": ("jax-train", {"VITJAX_MALLOC": "system"}),
        "jax / glibc kept": ("jax-train", {"VITJAX_MALLOC": "keep"}),
        "timm / glibc": ("timm-train", {}),
    }
    mimalloc = mimalloc_library()
    if mimalloc:  # what vitjax.main runs on a CPU host: the wheel's mimalloc, preloaded with vitjax's settings
        out["jax / mimalloc"] = ("jax-train", {"LD_PRELOAD": mimalloc, **MIMALLOC_SETTINGS})
        kept = {"MIMALLOC_PURGE_DELAY": "-1"}  # every freed page kept resident: the setting before 2026-12-07
        out["jax / mimalloc kept"] = ("jax-train", {"LD_PRELOAD": mimalloc, **MIMALLOC_SETTINGS, **kept})
        huge = {"MIMALLOC_ALLOW_LARGE_OS_PAGES": "1"}  # measured, not the default: see docs/performance.md
        out["jax / mimalloc huge pages"] = ("jax-train", {"LD_PRELOAD": mimalloc, **MIMALLOC_SETTINGS, **huge})
    if only := os.environ.get("ALLOCATOR_VARIANTS"):  # a comma-separated subset of the labels (--variants)
        out = {label: out[label] for label in out if label in only.split(",")}
    library = tcmalloc_library() if not only or "tcmalloc" in only else None
    if library:
        out["jax / tcmalloc"] = ("jax-train", {"LD_PRELOAD": library})
        out["timm / tcmalloc"] = ("timm-train", {"LD_PRELOAD": library})
    return out


def measure(
    model: str, batch: int, rounds: int, warmup: int, threads: int, work: Path, log_dir: Path, together: int = 0
) -> dict:
    """Images/s per variant. ``together`` > 0 keeps at most that many workers alive at once (groups
    of variants, each group timed in its own interleaved rounds): TNT_small at batch 32 holds ~9 GB
    per worker, more than 24 GB takes for all six at once."""
    labels = list(variants())
    size = together or len(labels)
    results: dict[str, dict] = {}
    for first in range(0, len(labels), size):
        results.update(
            _measure_group(labels[first : first + size], model, batch, rounds, warmup, threads, work, log_dir)
        )
    for r in results.values():
        if r.get("seconds"):
            r["images_per_s"] = batch / statistics.median(r["seconds"])
    base = results.get("timm / glibc", {}).get("images_per_s")
    for r in results.values():
        if base and "images_per_s" in r:
            r["vs_timm_glibc"] = r["images_per_s"] / base
    return results


def _measure_group(labels, model, batch, rounds, warmup, threads, work, log_dir) -> dict:
    results: dict[str, dict] = {}
    workers: dict[str, Worker] = {}
    every = variants()
    try:
        for label in labels:
            engine, env = every[label]
            try:
                workers[label] = Worker(
                    engine,
                    model,
                    work,
                    "cpu",
                    threads,
                    log_dir,
                    extra_env=env,
                    label=label.replace(" / ", "-").replace(" ", "-"),
                )
                workers[label].ask("warmup", batch=batch, n=warmup)
                results[label] = {"seconds": []}
            except (WorkerError, OSError) as e:
                results[label] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        for _ in range(rounds):
            for label, worker in workers.items():
                if "seconds" not in results[label]:
                    continue
                try:
                    results[label]["seconds"].append(worker.ask("time", batch=batch)["seconds"])
                except (WorkerError, OSError):  # the worker ended: out of memory, most likely
                    results[label] = {"error": f"worker ended ({len(workers)} alive at once; out of memory?)"}
    finally:
        for worker in workers.values():
            worker.close()
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["DeiT_tiny_patch16_224", "DeiT_small_patch16_224", "TNT_small"])
    p.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--together", type=int, default=0, help="at most this many workers alive at once (0: all)")
    p.add_argument("--append", action="store_true", help="add these rows to the results file's (same date)")
    p.add_argument("--variants", default="", help="comma-separated labels to run (default: all)")
    args = p.parse_args(argv)
    if args.variants:
        os.environ["ALLOCATOR_VARIANTS"] = args.variants
    threads = args.threads or len(os.sched_getaffinity(0))
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": machine.describe(measure_clock=False).get("cpu", ""),
        "threads": threads,
        "rounds": args.rounds,
        "command": "python -m benchmarks.allocator " + shlex.join(sys.argv[1:] if argv is None else argv),
        "rows": [],
    }
    previous = args.out / "allocator.json"
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        report["rows"] = old["rows"]
        report["command"] = f"{old['command']}; then {report['command']}"
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            work = Path(tmp) / model
            work.mkdir()
            _prepare(model, work, threads, "cpu")
            for batch in args.batches:
                _log(f"{model} batch {batch}")
                report["rows"].append(
                    {
                        "model": model,
                        "batch": batch,
                        "results": measure(
                            model, batch, args.rounds, args.warmup, threads, work, Path(tmp) / "logs", args.together
                        ),
                    }
                )
                write_report(report, args.out)  # row by row: a later failure keeps what was measured
    return write_report(report, args.out, final=True)


def write_report(report: dict, out: Path, final: bool = False) -> dict:
    threads, rounds = report["threads"], report["rounds"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "allocator.json").write_text(json.dumps(report, indent=1) + "\n")
    labels = list(variants())
    lines = [
        f"# Training step by host allocator ({report['date']}, {report['cpu']}, {threads} threads)",
        "",
        f"`{report['command']}`: images/s, median of {rounds} interleaved rounds (x timm on glibc as it comes).",
        "",
        "| model | batch | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for row in report["rows"]:
        cells = []
        for label in labels:
            r = row["results"].get(label, {})
            cells.append(
                f"{r['images_per_s']:.2f} ({r.get('vs_timm_glibc', float('nan')):.2f}x)"
                if "images_per_s" in r
                else r.get("error", "-")
            )
        lines.append(f"| {row['model']} | {row['batch']} | " + " | ".join(cells) + " |")
    (out / "allocator.md").write_text("\n".join(lines) + "\n")
    if final:
        print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
