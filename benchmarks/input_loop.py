"""The training loop against its bare jitted step, side by side in one process, for the issue-26 jobs.

``python -m benchmarks.input_loop [--job digits|deit_tiny] [--batch N] [--rounds 3] [--steps 20]``

* ``digits``: the quick start's default job (``vitjax/training/default_config.py``: a 2-block
  DeiT on scikit-learn's 8x8 digits, batch 128);
* ``deit_tiny``: ``configs/deit_tiny.py`` (RandAugment, random erasing 0.25, Mixup/CutMix,
  label smoothing, AdamW) on ~200 photo-like 500x375 JPEGs (``benchmarks.loader.write_jpegs``).

One experiment, one jitted step (``vitjax.training.train.jitted_train_step``), then rounds of
interleaved variants, each timing ``--steps`` steps after two warm-up steps:

* ``bare``: the step on one batch already on the device, the previous loss read after each
  dispatch (as the loop reads it), so the device never runs more than one step ahead;
* ``loop <variant>``: what ``run_steps`` does per step: the next batch from the training
  loader's iterator, placed on the devices, the step dispatched, the previous loss read;
  ``data_wait`` is the share of that time spent getting the batch (``InputWaitMeter``).

Variants differ only in environment settings read by the loader at ``iterate``
(``--variants name=VAR:value,...``; ``LOADER:per-image`` is ``Experiment.train_loader(per_image=True)``, for
jobs without random erasing,
``LOADER:vitjax.main`` what ``vitjax.main`` builds; ``PLACE:main`` copies each batch to the devices in
the loop's own thread, as ``vitjax.main`` did before it placed them one batch ahead in the loader's,
``PLACE:ahead``, the default). Results: one entry per job and batch in
``benchmarks/results/input_loop.json``, all of them in ``input_loop.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vitjax.hostmem import allocator_summary, keep_freed_memory, preload_allocator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def job_config(job: str, batch: int | None, data_root: Path, matmul: str = ""):
    if job == "digits":
        from vitjax.training.default_config import get_config

        c = get_config()
        if batch:
            c.batch_size = batch
        if matmul:
            c.model.matmul = matmul
        return c
    from benchmarks.train_loop import model_config

    return model_config("DeiT_tiny_patch16_224", data_root, batch or 8, 10**6, 4, matmul or "auto")


def parse_variants(text: str) -> list[tuple[str, dict[str, str]]]:
    variants = []
    for item in text.split(","):
        name, _, settings = item.partition("=")
        env = dict(s.split(":", 1) for s in settings.split("+") if s)
        variants.append((name, env))
    return variants


@contextlib.contextmanager
def environment(env: dict[str, str]):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    switch = sys.getswitchinterval()
    if "SWITCH" in env:  # the GIL's switch interval (s) while the variant runs
        sys.setswitchinterval(float(env["SWITCH"]))
    try:
        yield
    finally:
        sys.setswitchinterval(switch)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(args) -> dict:
    import jax

    import vitjax
    from vitjax.training import train
    from vitjax.training.monitoring import InputWaitMeter
    from vitjax.training.optim import lr_schedule, make_optimizer

    with tempfile.TemporaryDirectory(prefix="vitjax-input-loop-") as tmp:
        tmp = Path(tmp)
        if args.job != "digits":
            from benchmarks.loader import write_jpegs

            write_jpegs(tmp / "data" / "train", args.images)
            write_jpegs(tmp / "data" / "val", 8)
        c = job_config(args.job, args.batch, tmp / "data", args.matmul)
        c.num_steps = 10**6
        exp = train.Experiment(c, tmp / "work")
        c = exp.config
        if exp.erases_on_device and any(env.get("LOADER") == "per-image" for _, env in parse_variants(args.variants)):
            raise SystemExit(
                f"LOADER:per-image gives float32 batches without random erasing's rectangles, but the {args.job} "
                "job's step erases on the device (Experiment.erases_on_device): leave that variant out"
            )
        loaders = {"per-image": exp.train_loader(per_image=True), "vitjax.main": exp.train_loader()}
        loaders["processes"] = type(loaders["vitjax.main"])(
            **{**loaders["vitjax.main"]._arguments, "worker_kind": "processes"}
        )
        loader = loaders["per-image"]
        schedule = lr_schedule(c.optimizer, c.batch_size, len(loader.source) / c.batch_size, 10**6)
        tx = make_optimizer(c.optimizer, schedule, exp.abstract_params, vitjax.get_spec(c.model.name).arch.depth)
        _, shardings = train.train_state_layout(exp, tx)
        state = train.initial_state(exp, tx, shardings)
        step_fn = train.jitted_train_step(exp, tx, schedule, shardings)
        first = loaders["vitjax.main"].batch(0)  # the batch vitjax.main's step gets (uint8 where batched)
        device_batch = exp.step_inputs(first)
        state, metrics = step_fn(state, *device_batch)
        jax.block_until_ready(metrics)

        def bare(state):
            previous = None
            times = []
            for i in range(args.steps + 2):
                started = time.perf_counter()
                state, metrics = step_fn(state, *device_batch)
                if previous is not None:
                    float(previous)
                previous = metrics["loss"]
                if i >= 2:
                    times.append(time.perf_counter() - started)
            float(previous)
            return state, {"s_per_step": statistics.mean(times)}

        def loop(state, env, start):
            meter, previous = InputWaitMeter(), None
            placed_ahead = env.get("PLACE", "ahead") == "ahead"
            loader = loaders[env.get("LOADER", "vitjax.main")]
            with (
                environment(env),
                contextlib.closing(loader.iterate(start, place=exp.step_inputs if placed_ahead else None)) as batches,
            ):
                for i in range(args.steps + 2):
                    if i == 2:
                        meter.read()
                        started = time.perf_counter()
                    with meter.waiting():
                        arrays = next(batches) if placed_ahead else exp.step_inputs(next(batches))
                    with meter.stepping():
                        state, metrics = step_fn(state, *arrays)
                        if previous is not None:
                            float(previous)
                        previous = metrics["loss"]
                float(previous)
                seconds = time.perf_counter() - started
            return state, {"s_per_step": seconds / args.steps, "data_wait": meter.read()}

        rows: dict[str, list[dict]] = {"bare": []}
        variants = parse_variants(args.variants)
        for name, _ in variants:
            rows[f"loop {name}"] = []
        start = 1
        for r in range(args.rounds):
            state, out = bare(state)
            rows["bare"].append(out)
            print(f"round {r} bare {out['s_per_step'] * 1000:.1f} ms/step", flush=True)
            for name, env in variants:
                state, out = loop(state, env, start)
                start += args.steps + 2
                rows[f"loop {name}"].append(out)
                print(
                    f"round {r} loop {name} {out['s_per_step'] * 1000:.1f} ms/step data_wait {out['data_wait']:.0%}",
                    flush=True,
                )
    from benchmarks.loader import cpu_name

    bare_s = statistics.median(o["s_per_step"] for o in rows["bare"])
    summary = []
    for name, outs in rows.items():
        s = statistics.median(o["s_per_step"] for o in outs)
        summary.append(
            {
                "row": name,
                "s_per_step": s,
                "steps_per_s": 1 / s,
                "images_per_s": c.batch_size / s,
                "over_bare": s / bare_s,
                "data_wait": statistics.median(o["data_wait"] for o in outs) if name != "bare" else None,
                "rounds": outs,
            }
        )
    return {
        "job": args.job,
        "model": c.model.name,
        "matmul": exp.model.matmul,
        "batch": c.batch_size,
        "num_workers": c.data.num_workers,
        "worker_kind": c.data.worker_kind,
        "steps": args.steps,
        "rounds": args.rounds,
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "load_average_before": args.load_before,
        "allocator": allocator_summary(),
        "variants": dict(parse_variants(args.variants)),
        "rows": summary,
    }


def markdown(results: dict) -> str:
    lines = [
        f"# Training loop vs bare step: {results['job']} ({results['model']}, batch {results['batch']}, "
        f"dense matmuls: {results.get('matmul', '?')})",
        "",
        f"CPU: {results['cpu']}, {results['cores']} cores (load average {results['load_average_before']:.2f} before); "
        f"allocator: {results['allocator']}; loader: {results['num_workers']} {results['worker_kind']}; "
        f"{results['rounds']} interleaved rounds of {results['steps']} steps, medians.",
        "",
        "| row | ms/step | steps/s | img/s | / bare | data_wait |",
        "|:--|--:|--:|--:|--:|--:|",
    ]
    for row in results["rows"]:
        wait = "" if row["data_wait"] is None else f"{row['data_wait']:.0%}"
        lines.append(
            f"| {row['row']} | {row['s_per_step'] * 1000:.1f} | {row['steps_per_s']:.2f} | "
            f"{row['images_per_s']:.1f} | {row['over_bare']:.2f}x | {wait} |"
        )
    lines += ["", "Variants (environment at `iterate`): " + json.dumps(results["variants"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", choices=("digits", "deit_tiny"), default="digits")
    p.add_argument("--batch", type=int, default=0, help="0: the job's own batch (digits 128, deit_tiny 8)")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="default=")
    p.add_argument("--matmul", default="", help="model.matmul (auto, xla, onednn); default: the job's config")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.load_before = os.getloadavg()[0]
    keep_freed_memory()  # as vitjax.main does where mimalloc was not preloaded (see __main__ below)
    np.random.seed(0)
    results = run(args)
    out = args.out or RESULTS / "input_loop"
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    everything = json.loads(path.read_text()) if path.exists() else {}
    everything[f"{args.job}_b{results['batch']}" + (f"_{args.matmul}" if args.matmul else "")] = results
    path.write_text(json.dumps(everything, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(markdown(r) for _, r in sorted(everything.items())))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    preload_allocator()  # the allocator vitjax.main runs on (vitjax.hostmem)
    raise SystemExit(main())
