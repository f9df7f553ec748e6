"""Inference and training throughput of our JAX path against the engines a user would otherwise use.

    python -m benchmarks.run                       # full run (~45 min on 2 CPU cores)
    python -m benchmarks.run --allocator tcmalloc  # every engine's process preloads tcmalloc (make bench)
    python -m benchmarks.run --quick               # smoke test (~3 min)
    python -m benchmarks.run --models TNT_small --batches 8 --repeats 20

For every model, one random init of our Flax model gives the weights every engine runs:
our JAX path (``jax.jit``, fp32, and bf16 compute), Paddle Inference with oneDNN (the
exported inference model), ONNX Runtime (Paddle2ONNX of that export), Paddle dygraph
(our Paddle mirror) and timm (eager and ``torch.compile``). Our JAX path, Paddle Inference
and ONNX Runtime are ``interop.deploy``'s predictors, configured as the parity report
configures them. Each engine lives in its own process (``benchmarks/worker.py``), so its
peak RSS is its own; outputs are checked against JAX fp32 before anything is timed.

Within each (model, batch) cell the engines are interleaved: every repeat times one call of
each engine, in an order rotated from repeat to repeat; warm-up calls (compilation included)
are excluded and the median over repeats is reported. Every engine gets the same thread
count (``--threads``, default: all cores this process may use).

Writes ``<out>/latest.md`` and ``<out>/latest.json`` (``quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import machine
from benchmarks.report import render_markdown
from benchmarks.worker import (
    CPU_ONLY_ENGINES,
    DEFAULT_INFERENCE_ENGINES,
    ENGINE_XLA_FLAGS,
    INFERENCE_ENGINES,
    TRAIN_ENGINES,
)
from interop.measure import latency_summary, timed, versions
from vitjax.hostmem import tcmalloc_library

DEFAULT_MODELS = ("DeiT_tiny_patch16_224", "DeiT_small_patch16_224", "DeiT_base_patch16_224", "TNT_small")
DEFAULT_TRAIN_MODELS = ("DeiT_tiny_patch16_224", "DeiT_small_patch16_224", "TNT_small")
FP32_ATOL = 1e-4
TRAIN_LOSS_ATOL = 5e-4  # the first 3 training losses of a peer against JAX's
ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    pass


class Worker:
    """One engine process; ``ask`` sends a command and waits for its answer."""

    def __init__(
        self,
        engine: str,
        model: str,
        work: Path,
        device: str,
        threads: int,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        label: str | None = None,
    ):
        self.engine = engine
        env = dict(_worker_env(threads, device), **(extra_env or {}))
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        if engine in ENGINE_XLA_FLAGS:
            if device != "cpu":
                raise WorkerError(f"{engine}: CPU-only XLA flags")
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + ENGINE_XLA_FLAGS[engine]).strip()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{model}.{label or engine}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", "serve", engine, model, str(work), device, str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text()[-2000:]
            raise WorkerError(f"{self.engine}: worker exited ({self.proc.returncode}); log tail:\n{tail}")
        return json.loads(line)

    def ask(self, cmd: str, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if not answer.get("ok"):
            raise WorkerError(f"{self.engine}: {cmd} failed: {answer.get('error')}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
            except (WorkerError, BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def _thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "GLOG_minloglevel": "2",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "FLAGS_call_stack_level": "0",
    }


def _worker_env(threads: int, device: str) -> dict[str, str]:
    """This process's environment with the thread counts set, and JAX kept on the CPU for ``device="cpu"``."""
    env = dict(os.environ, **_thread_env(threads))
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _worker_command(args: list[str], threads: int, device: str, timeout_s: float | None = None) -> str:
    """Runs ``python -m benchmarks.worker ARGS`` to completion and returns its stdout; a failure is a
    :class:`WorkerError` carrying the end of its stderr."""
    try:
        res = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", *args],
            capture_output=True,
            text=True,
            env=_worker_env(threads, device),
            cwd=ROOT,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise WorkerError(f"benchmarks.worker {' '.join(args)}: no answer within {timeout_s:.0f} s") from None
    if res.returncode != 0:
        raise WorkerError(f"benchmarks.worker {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res.stdout


def _xla_matmul_ceiling(threads: int, device: str) -> float | None:
    """FLOP/s of a 2048^3 float32 matmul under XLA (``worker matmul-ceiling``); None if it fails."""
    try:
        out = _worker_command(["matmul-ceiling"], threads, device, timeout_s=300)
        return float(json.loads(out.strip().splitlines()[-1])["flops"])
    except (WorkerError, ValueError, IndexError, KeyError) as e:
        _log(f"XLA matmul ceiling not measured: {str(e).splitlines()[0]}")
        return None


def _prepare(model: str, work: Path, threads: int, device: str) -> dict:
    """``worker prepare``: weights and exports in ``work``; returns its ``prepare.json`` (export times, macs, params)."""
    _worker_command(["prepare", model, str(work)], threads, device)
    return json.loads((work / "prepare.json").read_text())


def _wait_until_quiet(max_wait_s: float, force: bool) -> list[str]:
    waited = 0.0
    while True:
        busy = machine.busy_processes()
        if not busy or force:
            return busy
        if waited >= max_wait_s:
            _log(f"still busy after {waited:.0f}s ({busy[0]} ...); measuring anyway, the report flags it")
            return busy
        _log(f"waiting for other jobs to finish: {busy[0]}")
        time.sleep(30)
        waited += 30


def _start_workers(engines, model, work, device, threads, log_dir) -> dict[str, Worker]:
    workers = {}
    for engine in engines:
        try:
            workers[engine] = Worker(engine, model, work, device, threads, log_dir)
            if not workers[engine].hello.get("ok"):
                _log(f"  {engine}: unavailable: {workers[engine].hello.get('error')}")
                workers.pop(engine).close()
        except WorkerError as e:
            _log(f"  {engine}: failed to start: {e}")
    return workers


def _time_cell(
    workers: dict[str, Worker],
    batch: int,
    repeats: int,
    warmup: int,
    gap_s: float,
    budget_s: float = 0.0,
    min_repeats: int = 5,
) -> dict[str, dict]:
    """Warm-up, then `repeats` rounds of one timed call per engine (order rotated per round).

    ``gap_s`` of idle time separates consecutive calls: thread pools keep spinning after a
    call (OpenMP's KMP_BLOCKTIME is 200 ms; ORT and XLA spin too), which would otherwise
    steal the cores from whichever engine runs next. With ``budget_s``, the rounds are cut to
    what fits in it (never below ``min_repeats``), estimated from one extra untimed call each.
    """
    names = list(workers)
    cell: dict[str, dict] = {}
    for name in names:
        cell[name] = {"warmup_s": workers[name].ask("warmup", batch=batch, n=warmup)["seconds"], "times_s": []}
        time.sleep(gap_s)
    if budget_s > 0:
        per_round = 0.0
        for name in names:
            per_round += workers[name].ask("warmup", batch=batch, n=1)["seconds"] + gap_s
            time.sleep(gap_s)
        repeats = max(min(repeats, min_repeats), min(repeats, int(budget_s / per_round)))
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            cell[name]["times_s"].append(workers[name].ask("time", batch=batch)["seconds"])
            time.sleep(gap_s)
    for name in names:
        mem = workers[name].ask("memory")
        cell[name].update(
            **latency_summary(cell[name]["times_s"], batch),
            peak_rss_mib=mem["maxrss"] / 2**20,
            rss_mib=mem["rss"] / 2**20,
            device_peak_mib=None if mem.get("device_peak") is None else mem["device_peak"] / 2**20,
        )
    return cell


def _max_abs_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")


@dataclasses.dataclass(frozen=True)
class Suite:
    """One kind of measurement over a model's engines: inference (``report["models"]``) or a
    training step (``report["training"]``). Both start one worker per engine, check outputs,
    then time one cell per batch; they differ in the fields below."""

    section: str  # the report's key: "models" or "training"
    label: str  # in log lines: "" or "train "
    engines: list[str]
    batches: list[int]
    repeats: int
    warmup: int
    budget_s: float
    # Output checks, returning entries for result["check"]: once before any batch, or at every batch.
    check_before: Callable[[dict[str, Worker]], dict] | None = None
    check_each_batch: Callable[[dict[str, Worker], int], dict] | None = None


def _check_inference(workers: dict[str, Worker]) -> dict:
    """Every engine's logits on one batch of 2 against JAX fp32 (``{engine: {...}}``; empty without ``jax``)."""
    outputs = {name: w.ask("check", batch=2)["output"] for name, w in workers.items()}
    checks = {}
    if "jax" in outputs:
        for name, out in outputs.items():
            diff = _max_abs_diff(out, outputs["jax"])
            fp32 = name != "jax-bf16"
            checks[name] = {"max_abs_diff_vs_jax_fp32": diff, "fp32": fp32, "ok": (diff <= FP32_ATOL) if fp32 else None}
            if fp32 and diff > FP32_ATOL:
                _log(f"  WARNING {name}: max |logits - JAX fp32| = {diff:.2e} > {FP32_ATOL}")
    return checks


def _check_training(workers: dict[str, Worker], batch: int) -> dict:
    """The first 3 losses of every engine at ``batch``, and their max abs difference from JAX's (``{str(batch): {...}}``)."""
    losses = {name: w.ask("check", batch=batch)["output"] for name, w in workers.items()}
    ref = losses.get("jax-train")
    diffs = {n: _max_abs_diff(v, ref) for n, v in losses.items() if ref is not None and n != "jax-train"}
    for name, diff in diffs.items():
        if diff > TRAIN_LOSS_ATOL:
            _log(f"  WARNING {name}: first 3 losses differ from JAX's by {diff:.1e}")
    return {str(batch): {"losses": losses, "max_abs_diff_vs_jax": diffs}}


def inference_suite(args) -> Suite:
    return Suite(
        "models",
        "",
        [e for e in args.engines if e in INFERENCE_ENGINES],
        args.batches,
        args.repeats,
        args.warmup,
        args.cell_budget,
        check_before=_check_inference,
    )


def training_suite(args) -> Suite:
    return Suite(
        "training",
        "train ",
        [e for e in args.engines_train if e in TRAIN_ENGINES],
        args.train_batches,
        args.train_repeats,
        args.train_warmup,
        0.0,
        check_each_batch=_check_training,
    )


def run_suite(suite: Suite, model: str, work: Path, args, log_dir: Path, report: dict) -> None:
    """Starts the suite's engines for ``model``, checks their outputs, times every batch, and
    records it all in ``report[suite.section][model]`` (saved after every cell)."""
    _log(f"{model}: {suite.label}starting {', '.join(suite.engines)}")
    result = report[suite.section][model]
    workers = _start_workers(suite.engines, model, work, args.device, args.threads, log_dir)
    result.update({"engines": {}, "cells": {}, "check": {}})
    for name, w in workers.items():
        result["engines"][name] = {
            "load_s": w.hello["load_s"],
            "rss_after_load_mib": w.hello["rss"] / 2**20,
            **w.hello.get("info", {}),
        }
    try:
        if suite.check_before:
            result["check"].update(suite.check_before(workers))
        for batch in suite.batches:
            if suite.check_each_batch:
                result["check"].update(suite.check_each_batch(workers, batch))
            busy = machine.busy_processes()
            cell, wall_s = timed(
                lambda batch=batch: _time_cell(
                    workers, batch, suite.repeats, suite.warmup, args.gap_ms / 1e3, suite.budget_s
                )
            )
            result["cells"][str(batch)] = {
                "engines": cell,
                "busy": busy + [b for b in machine.busy_processes() if b not in busy],
                "load_avg": machine.load_average(),
                "wall_s": wall_s,
            }
            summary = "  ".join(f"{n} {c['images_per_s']:.2f}" for n, c in cell.items())
            _log(f"  {model} {suite.label}b{batch}: img/s  {summary}  ({wall_s:.0f}s)")
            _save(report, args)
    finally:
        for w in workers.values():
            w.close()


def _paths(args) -> tuple[Path, Path]:
    out = Path(args.out)
    stem = "quick" if args.quick else "latest"
    return out / f"{stem}.json", out / f"{stem}.md"


def _save(report: dict, args) -> None:
    json_path, md_path = _paths(args)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    md_path.write_text(render_markdown(report))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per (model, batch) cell")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per engine and batch (compilation included)")
    p.add_argument(
        "--engines",
        nargs="+",
        default=list(DEFAULT_INFERENCE_ENGINES),
        choices=INFERENCE_ENGINES,
        help="jax-unpinned: our JAX path with XLA's CPU workers left unpinned; jax-vw512 (not run by default): "
        "with XLA_FLAGS=--xla_cpu_prefer_vector_width=512 (CPU only)",
    )
    p.add_argument("--train-models", nargs="*", default=list(DEFAULT_TRAIN_MODELS))
    p.add_argument("--train-batches", nargs="+", type=int, default=[8, 32])
    p.add_argument("--train-repeats", type=int, default=8)
    p.add_argument("--train-warmup", type=int, default=2)
    p.add_argument("--engines-train", nargs="+", default=list(TRAIN_ENGINES), choices=TRAIN_ENGINES)
    p.add_argument("--no-train", action="store_true")
    p.add_argument(
        "--cell-budget",
        type=float,
        default=60,
        help="seconds of timed rounds per inference cell: fewer rounds (at least 5) where one round is slow; 0: always --repeats",
    )
    p.add_argument(
        "--gap-ms",
        type=float,
        default=300,
        help="idle time between two timed calls (lets spinning thread pools go to sleep)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: DeiT-tiny and TNT_small at batch 8, 3 repeats, DeiT-tiny training (writes quick.*)",
    )
    p.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all usable cores)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--fma-pipes", type=int, default=None, help="override the FMA pipes per core used for the peak")
    p.add_argument("--force", action="store_true", help="do not wait for other pytest/training jobs to finish")
    p.add_argument(
        "--max-wait", type=float, default=1800, help="seconds to wait for other jobs before measuring anyway"
    )
    p.add_argument(
        "--allocator",
        choices=("default", "system", "tcmalloc"),
        default="default",
        help="tcmalloc: preload it into every engine's process (LD_PRELOAD); default: the system malloc, which "
        "our JAX engines set to keep freed buffers as vitjax's entry points do (vitjax.hostmem); system: "
        "glibc left as it comes everywhere (VITJAX_MALLOC=system)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.allocator == "system":
        os.environ["VITJAX_MALLOC"] = "system"
    if args.allocator == "tcmalloc":
        library = tcmalloc_library()
        if library is None:
            p.error("--allocator tcmalloc: no tcmalloc found (Debian/Ubuntu: apt install libtcmalloc-minimal4)")
        os.environ["LD_PRELOAD"] = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD", "")]))
    if args.quick:
        args.models = ["DeiT_tiny_patch16_224", "TNT_small"]
        args.batches, args.repeats, args.warmup = [8], 3, 2
        args.train_models, args.train_batches, args.train_repeats, args.train_warmup = (
            ["DeiT_tiny_patch16_224"],
            [8],
            3,
            1,
        )
    if args.no_train:
        args.train_models = []
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.device == "auto":
        args.device = "gpu" if machine.gpu_names() else "cpu"
    if args.device != "cpu":
        args.engines = [e for e in args.engines if e not in CPU_ONLY_ENGINES]
    return args, argv


def main(argv=None) -> dict:
    args, _ = parse_args(argv)
    command = "python -m benchmarks.run" + (
        "" if argv is None and len(sys.argv) <= 1 else " " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    busy_at_start = _wait_until_quiet(args.max_wait, args.force)
    started = time.time()
    _log("machine: measuring the clock and the XLA matmul ceiling")
    info = machine.describe(fma_pipes=args.fma_pipes)
    info["xla_matmul_2048_flops"] = _xla_matmul_ceiling(args.threads, args.device)
    info["gpus"] = machine.gpu_names()
    report = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "device": args.device,
        "threads": args.threads,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "allocator": os.environ["LD_PRELOAD"] if args.allocator == "tcmalloc" else args.allocator,
        "machine": info,
        "versions": versions(),
        "settings": {
            "repeats": args.repeats,
            "warmup": args.warmup,
            "train_repeats": args.train_repeats,
            "jax_pin_threads": args.device == "cpu",  # JaxPredictor's default on CPU
            "train_warmup": args.train_warmup,
            "gap_ms": args.gap_ms,
            "cell_budget_s": args.cell_budget,
            "batches": args.batches,
            "train_batches": args.train_batches,
            "fp32_atol": FP32_ATOL,
            "quick": args.quick,
        },
        "busy_at_start": busy_at_start,
        "models": {},
        "training": {},
    }
    _log(f"peak: {info['peak_derivation']}")
    log_dir = Path(args.out) / "logs"
    with tempfile.TemporaryDirectory(prefix="vitjax-bench-") as tmp:
        for model in dict.fromkeys([*args.models, *args.train_models]):
            work = Path(tmp) / model
            _log(f"{model}: random init, export to Paddle Inference and ONNX")
            prep = _prepare(model, work, args.threads, args.device)
            if model in args.models:
                report["models"][model] = {"macs_per_image": prep["macs"], "params": prep["params"], "export": prep}
                run_suite(inference_suite(args), model, work, args, log_dir, report)
            if model in args.train_models:
                report["training"][model] = {"macs_per_image": prep["macs"], "params": prep["params"]}
                run_suite(training_suite(args), model, work, args, log_dir, report)
            _save(report, args)
    report["wall_s"] = time.time() - started
    report["load_avg_end"] = machine.load_average()
    _save(report, args)
    json_path, md_path = _paths(args)
    _log(f"wrote {md_path} and {json_path} ({report['wall_s'] / 60:.1f} min)")
    print(md_path.read_text())
    return report


if __name__ == "__main__":
    main()
