"""ONNX from JAX (jax2onnx) against ONNX from Paddle (Paddle2ONNX), both in ONNX Runtime on the CPU.

    python -m benchmarks.onnx_from_jax                               # DeiT-tiny and TNT_small, 1 thread
    python -m benchmarks.onnx_from_jax --models DeiT_tiny_patch16_224 --threads 2 --rounds 5
    python -m benchmarks.onnx_from_jax --extra "TNT_small jax2onnx 0.13 batched=/tmp/tnt_batched.onnx"

Per model: random weights (seed 0), saved once; both files are written from those same weights
with logits out (``interop export --logits`` + Paddle2ONNX opset 13; ``interop onnx --from jax
--logits``, opset 21). Every file gets the same ONNX Runtime session settings as the deploy
predictor (``ORT_ENABLE_ALL``, sequential, ``--threads`` intra-op threads, one inter-op thread).
Timing is interleaved: each round times every file at every batch size in turn (``--runs``
calls after 2 warm-up calls), so a neighbour's load hits all files alike; the table gives the
median over all rounds' calls. Also recorded: the max abs difference of each file's logits from
the JAX model's, and what ONNX Runtime's optimizer made of each graph (the op types of the
optimized model: which fusions it applied). ``--extra LABEL=FILE`` adds a file made elsewhere
(e.g. with another jax2onnx) to the same rounds. Writes ``<out>/onnx_from_jax.{json,md}``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from benchmarks.machine import busy_processes, describe, load_average
from interop.measure import VERSIONED_PACKAGES, call_times, versions, write_results


def session(path: Path, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimized_ops(path: Path, threads: int) -> dict[str, int]:
    """Op types (``domain:type`` for contrib ops) of the graph ONNX Runtime runs, Loop bodies included."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        session(path, threads, out)
        model = onnx.load(str(out))
    counts: collections.Counter = collections.Counter()

    def walk(graph):
        for node in graph.node:
            counts[f"{node.domain}:{node.op_type}" if node.domain else node.op_type] += 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)

    walk(model.graph)
    return dict(counts.most_common())


def build_files(name: str, workdir: Path) -> tuple[dict[str, Path], object]:
    import vitjax
    from interop.inference import export_inference_model, export_onnx
    from interop.onnx_from_jax import export_onnx_from_jax

    size = vitjax.get_spec(name).img_size
    variables = jax.jit(vitjax.create_model(name).init)(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
    paddle_dir = export_inference_model(variables, name, workdir / f"{name}_paddle", softmax=False, overwrite=True)
    files = {
        "Paddle2ONNX": export_onnx(paddle_dir, workdir / f"{name}_paddle2onnx.onnx", overwrite=True),
        "jax2onnx": export_onnx_from_jax(
            variables, workdir / f"{name}_jax2onnx.onnx", name, softmax=False, overwrite=True
        ),
    }
    return files, variables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["DeiT_tiny_patch16_224", "TNT_small"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5, help="timed calls per file, batch and round")
    parser.add_argument("--extra", action="append", default=[], help="'MODEL LABEL=FILE.onnx': another file to time")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    import vitjax

    results = {}
    with tempfile.TemporaryDirectory(prefix="onnx-from-jax-") as tmp:
        for name in args.models:
            files, variables = build_files(name, Path(tmp))
            for extra in args.extra:
                head, path = extra.split("=", 1)
                model, label = head.split(" ", 1)
                if model == name:
                    files[label] = Path(path)
            size = vitjax.get_spec(name).img_size
            x = np.random.RandomState(1).standard_normal((max(args.batches), 3, size, size)).astype(np.float32)
            model = vitjax.create_model(name, matmul="xla")
            reference = np.asarray(jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1)))
            sessions = {label: session(path, args.threads) for label, path in files.items()}
            entry = {"files": {}, "latency_ms": {}}
            for label, s in sessions.items():
                out = s.run(None, {s.get_inputs()[0].name: x})[0]
                entry["files"][label] = {
                    "bytes": files[label].stat().st_size,
                    "max_abs_logits_vs_jax": float(np.abs(out - reference).max()),
                    "optimized_ops": optimized_ops(files[label], args.threads),
                }
            times = {(label, b): [] for label in sessions for b in args.batches}
            for _ in range(args.rounds):
                for b in args.batches:
                    for label, s in sessions.items():
                        feed = {s.get_inputs()[0].name: np.ascontiguousarray(x[:b])}
                        call_times(lambda s=s, feed=feed: s.run(None, feed), 2)
                        times[label, b] += call_times(lambda s=s, feed=feed: s.run(None, feed), args.runs)
            for (label, b), ts in times.items():
                median = statistics.median(ts)
                entry["latency_ms"].setdefault(label, {})[str(b)] = {
                    "median_ms": median * 1e3,
                    "min_ms": min(ts) * 1e3,
                    "images_per_s": b / median,
                    "calls": len(ts),
                }
            results[name] = entry
            print(name, json.dumps(entry["latency_ms"]), flush=True)

    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.onnx_from_jax " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": describe(measure_clock=False),
        "load_average_at_end": load_average(),
        "busy_processes_at_end": busy_processes(),
        "threads": args.threads,
        "versions": versions((*VERSIONED_PACKAGES, "onnx", "jax2onnx")),
        "models": results,
    }
    print(f"wrote {write_results(args.out, 'onnx_from_jax', report, render(report))}")
    return 0


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# ONNX from JAX (jax2onnx) vs ONNX from Paddle (Paddle2ONNX) in ONNX Runtime",
        "",
        f"`{report['command'].strip()}`, {report['date']}. CPU: {m['cpu']} ({m['cores']} cores, {m['isa']}); "
        f"ONNX Runtime CPU provider, {report['threads']} intra-op thread(s), ORT_ENABLE_ALL. "
        f"Load average at the end: {report['load_average_at_end']:.2f} (a shared machine: compare within a table).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "Same random weights (seed 0) in both files; logits out; median of all interleaved calls.",
        "",
    ]
    for name, entry in report["models"].items():
        batches = list(next(iter(entry["latency_ms"].values())))
        lines += [
            f"## {name}",
            "",
            "| file | " + " | ".join(f"batch {b}: ms (img/s)" for b in batches) + " | max abs vs JAX |",
        ]
        lines.append("|---|" + "---|" * (len(batches) + 1))
        for label, lat in entry["latency_ms"].items():
            cells = " | ".join(f"{lat[b]['median_ms']:.1f} ({lat[b]['images_per_s']:.1f})" for b in batches)
            lines.append(f"| {label} | {cells} | {entry['files'][label]['max_abs_logits_vs_jax']:.2g} |")
        lines += ["", "What ONNX Runtime ran (op types after its graph optimizations, Loop bodies included):", ""]
        for label, info in entry["files"].items():
            ops = ", ".join(f"{op} {n}" for op, n in info["optimized_ops"].items())
            lines.append(f"- {label}: {ops}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
