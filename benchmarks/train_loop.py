"""What the training loop adds to the step: ``vitjax.main``'s time per step against the bare jitted step.

``python -m benchmarks.train_loop [--model DeiT_tiny_patch16_224] [--batch 8] [--steps 12]``

Both sides run the same config (the model's ImageNet recipe from ``configs/``: RandAugment,
random erasing, Mixup/CutMix, label smoothing, AdamW with its schedule) on the same data: a
folder of ImageNet-sized JPEGs (500x375, written once into a temporary directory).

* **loop**: ``train.train_and_evaluate`` end to end (input pipeline, sharding, the deferred
  NaN check, logging, checkpointing), run with ``num_steps`` = 2 and 2 + ``--steps``, each in
  a fresh process; the difference of the two wall times over ``--steps`` is the loop's time
  per step, with compilation, start-up and the final evaluation cancelling out. Its ``data_wait`` (the share
  of step time spent waiting for input, from ``metrics.jsonl``) is reported too.
* **bare step**: the same jitted ``train_step`` (same experiment, optimizer and shardings),
  called ``--steps`` times in a row on one batch already on the device (its own process too).

Results: ``benchmarks/results/train_loop.{json,md}``. Ratios are what to compare: absolute
times depend on the machine (named in the output).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def write_jpegs(root: Path, per_class: int, classes: int, seed: int = 0) -> None:
    """``root/{train,val}/class_k/i.jpg``: smooth random 500x375 photos-like JPEGs (quality 90)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", 2)):
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
                image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
                image.save(folder / f"{i}.jpg", quality=90)


def model_config(model: str, data_root: Path, batch: int, num_steps: int, classes: int, matmul: str = "auto"):
    """The model's ``configs/`` recipe on the JPEG folder, no mid-run eval, logging as the config
    does (every 50 steps: the first and last step here; logging every step would read the
    device's metrics after each step and take away the overlap of input and compute)."""
    config_file = ROOT / "configs" / f"{model_config_name(model)}.py"
    spec = importlib.util.spec_from_file_location("benchmark_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.num_classes = classes
    c.model.matmul = matmul
    c.data.update(source="folder", root=str(data_root))
    c.update(
        batch_size=batch,
        eval_batch_size=batch,
        num_steps=num_steps,
        eval_every=0,
        checkpoint_every=10**6,
        plot=False,
    )
    return c


def model_config_name(model: str) -> str:
    names = {"DeiT_tiny_patch16_224": "deit_tiny", "DeiT_small_patch16_224": "deit_small", "TNT_small": "tnt_small"}
    if model not in names:
        raise SystemExit(f"no config for {model}; choose one of {', '.join(names)}")
    return names[model]


def loop_seconds(config, workdir: Path) -> float:
    from vitjax.training import train

    started = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    return time.perf_counter() - started


def data_wait(workdir: Path) -> float:
    from vitjax.training import reporting

    waits = [r["data_wait"] for r in reporting.read_metrics(workdir) if r["kind"] == "train" and "data_wait" in r]
    return float(waits[-1]) if waits else math.nan


def bare_step_seconds(config, workdir: Path, steps: int) -> list[float]:
    """Seconds per call of the loop's own jitted step, on one device batch, ``steps`` times."""
    import jax

    import vitjax
    from vitjax.training import train
    from vitjax.training.optim import lr_schedule, make_optimizer

    exp = train.Experiment(config, workdir)
    c = exp.config
    loader = exp.train_loader()
    schedule = lr_schedule(c.optimizer, c.batch_size, len(loader.source) / c.batch_size, c.num_steps)
    tx = make_optimizer(c.optimizer, schedule, exp.abstract_params, vitjax.get_spec(c.model.name).arch.depth)
    _, shardings = train.train_state_layout(exp, tx)
    state = train.initial_state(exp, tx, shardings)
    step = train.jitted_train_step(exp, tx, schedule, shardings)
    batches = loader.iterate(0)
    batch = next(batches)
    batches.close()
    inputs = exp.step_inputs(batch)
    for _ in range(2):  # compile, warm up
        state, metrics = step(state, *inputs)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        state, metrics = step(state, *inputs)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    return times


def machine() -> str:
    from benchmarks.machine import describe

    m = describe(measure_clock=False)
    return f"Machine: {m['cpu']} (family {m['family']}), {m['cores']} cores, {m['isa']}, {m['memory_gib']} GiB."


def worker(args) -> int:
    """One measurement in this (fresh) process; prints its result as the last line (JSON)."""
    config = model_config(args.model, args.data, args.batch, args.num_steps, args.classes, args.matmul)
    if args.worker == "loop":
        result = {"seconds": loop_seconds(config, args.workdir), "data_wait": data_wait(args.workdir)}
    else:
        result = {"step_seconds": bare_step_seconds(config, args.workdir, args.steps)}
    print(json.dumps(result))
    return 0


def measure(args, kind: str, data: Path, workdir: Path, num_steps: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.train_loop",
        "--worker",
        kind,
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--classes",
        str(args.classes),
        "--matmul",
        args.matmul,
        "--data",
        str(data),
        "--workdir",
        str(workdir),
        "--num-steps",
        str(num_steps),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DeiT_tiny_patch16_224")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="timed steps (loop: extra steps of the long run)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--matmul", choices=("auto", "onednn", "xla"), default="auto", help="model.matmul for both sides")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--worker", choices=("loop", "bare"), help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--num-steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="vitjax-train-loop-") as tmp:
        tmp = Path(tmp)
        per_class = max(2, math.ceil(args.batch * (args.steps + 4) / args.classes))
        write_jpegs(tmp / "data", per_class, args.classes)
        bare = statistics.median(measure(args, "bare", tmp / "data", tmp / "bare", 2 + args.steps)["step_seconds"])
        short = measure(args, "loop", tmp / "data", tmp / "short", 2)
        long = measure(args, "loop", tmp / "data", tmp / "long", 2 + args.steps)
        loop = (long["seconds"] - short["seconds"]) / args.steps
        wait = long["data_wait"]

    result = {
        "model": args.model,
        "batch": args.batch,
        "steps": args.steps,
        "matmul": args.matmul,
        "machine": machine(),
        "loop_s_per_step": loop,
        "bare_s_per_step": bare,
        "loop_over_bare": loop / bare,
        "data_wait": wait,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"# Training loop vs bare step\n\n{result['machine']}\n\n"
        f"| Model | Batch | model.matmul | vitjax.main, s/step | bare jitted step, s/step | loop / bare | data_wait (last step) |\n"
        f"|:--|--:|:--|--:|--:|--:|--:|\n"
        f"| {args.model} | {args.batch} | {args.matmul} | {loop:.3f} | {bare:.3f} | {loop / bare:.2f}x | {wait:.1%} |\n"
    )
    (args.out / "train_loop.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
