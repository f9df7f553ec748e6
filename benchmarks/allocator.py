"""The training step under each host allocator, side by side in one run: glibc as it comes, glibc kept, tcmalloc.

``python -m benchmarks.allocator`` prepares each model's weights once, then starts one
training worker (``benchmarks.worker``, the same engines as ``benchmarks.run``) per variant and
times their steps in interleaved rounds, so a busy moment of the machine hits every variant alike:

* ``jax / glibc``: vitjax's step on glibc's malloc as it comes (``VITJAX_MALLOC=system``);
* ``jax / glibc kept``: glibc told to keep freed buffers (:func:`vitjax.hostmem.keep_freed_memory`),
  no preload: what ``python -m vitjax.main`` runs where mimalloc is not installed, and what a
  user's own loop gets from ``vitjax.keep_freed_memory()``;
* ``jax / mimalloc``: what ``python -m vitjax.main`` runs on a CPU host: the ``cmeel-mimalloc``
  wheel's library preloaded, told to keep freed memory on huge pages
  (:func:`vitjax.hostmem.preload_allocator`);
* ``jax / tcmalloc``: ``LD_PRELOAD`` of tcmalloc (where installed);
* ``timm / glibc`` and ``timm / tcmalloc``: timm's DeiT/TNT with the same AdamW, the peer.

Images/s are medians over the rounds; ratios are to ``timm / glibc``, what a ``pip install`` user
of PyTorch gets. Results: ``benchmarks/results/allocator.{json,md}`` with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import os
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
    if mimalloc:  # what vitjax.main runs on a CPU host: the wheel's mimalloc, preloaded and told to keep memory
        out["jax / mimalloc"] = ("jax-train", {"LD_PRELOAD": mimalloc, **MIMALLOC_SETTINGS})
    library = tcmalloc_library()
    if library:
        out["jax / tcmalloc"] = ("jax-train", {"LD_PRELOAD": library})
        out["timm / tcmalloc"] = ("timm-train", {"LD_PRELOAD": library})
    return out


def measure(model: str, batch: int, rounds: int, warmup: int, threads: int, work: Path, log_dir: Path) -> dict:
    results: dict[str, dict] = {}
    workers: dict[str, Worker] = {}
    try:
        for label, (engine, env) in variants().items():
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
            except WorkerError as e:
                results[label] = {"error": str(e).splitlines()[0]}
        for _ in range(rounds):
            for label, worker in workers.items():
                if "seconds" in results[label]:
                    results[label]["seconds"].append(worker.ask("time", batch=batch)["seconds"])
    finally:
        for worker in workers.values():
            worker.close()
    for r in results.values():
        if r.get("seconds"):
            r["images_per_s"] = batch / statistics.median(r["seconds"])
    base = results.get("timm / glibc", {}).get("images_per_s")
    for r in results.values():
        if base and "images_per_s" in r:
            r["vs_timm_glibc"] = r["images_per_s"] / base
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["DeiT_tiny_patch16_224", "DeiT_small_patch16_224", "TNT_small"])
    p.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": machine.describe(measure_clock=False).get("cpu", ""),
        "threads": threads,
        "rounds": args.rounds,
        "command": " ".join(["python -m benchmarks.allocator", *(sys.argv[1:] if argv is None else argv)]),
        "rows": [],
    }
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
                        "results": measure(model, batch, args.rounds, args.warmup, threads, work, Path(tmp) / "logs"),
                    }
                )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "allocator.json").write_text(json.dumps(report, indent=1) + "\n")
    labels = list(variants())
    lines = [
        f"# Training step by host allocator ({report['date']}, {report['cpu']}, {threads} threads)",
        "",
        f"`{report['command']}`: images/s, median of {args.rounds} interleaved rounds (x timm on glibc as it comes).",
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
    (args.out / "allocator.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
