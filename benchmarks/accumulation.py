"""An accumulated training step against one big step, side by side in one process.

``python -m benchmarks.accumulation [--model DeiT_tiny_patch16_224] [--batch 64] [--accum 4] [--rounds 3]``

Both variants are the loop's own ``make_train_step`` (AdamW, dropout off, no mixing), jitted with
the state donated, on the same batch of ``--batch`` images: ``accum_steps=1`` (one batch) and
``accum_steps=--accum`` (``--accum`` micro-batches of ``batch / accum`` in a ``lax.scan``), plus,
for reference, one plain step on a single micro-batch. Time: the median of ``--rounds``
interleaved rounds, after a compile-and-warm-up call. Memory: XLA's compiled memory analysis
(``temp``: activations and other temporaries; ``arguments``: state + batch; ``total``:
arguments + outputs not aliased to a donated argument + temp), which is what the device must
hold, measured, not assumed. Results go to ``benchmarks/results/accumulation.{json,md}``
with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np
import optax

import vitjax
from benchmarks import machine
from vitjax.training.config import base_config
from vitjax.training.steps import TrainState, make_train_step

RESULTS = Path(__file__).resolve().parent / "results"


def _config(model: str, accum: int):
    c = base_config()
    c.model.update(name=model, num_classes=1000, drop_path_rate=0.0)
    c.accum_steps = accum
    return c


def _memory(compiled) -> dict[str, float]:
    m = compiled.memory_analysis()
    mib = 1 / 2**20
    out = {
        "temp_mib": m.temp_size_in_bytes * mib,
        "arguments_mib": m.argument_size_in_bytes * mib,
        "outputs_mib": m.output_size_in_bytes * mib,
        "aliased_mib": m.alias_size_in_bytes * mib,
    }
    # What the step holds at once: its arguments, its outputs not written in place of a donated
    # argument, and its temporaries. (XLA's CPU backend reports peak_memory_in_bytes as the
    # arguments alone, so it is kept apart, not used.)
    out["total_mib"] = out["arguments_mib"] + out["outputs_mib"] - out["aliased_mib"] + out["temp_mib"]
    out["xla_peak_field_mib"] = getattr(m, "peak_memory_in_bytes", 0) * mib
    return out


def run(model_name: str, batch: int, accum: int, rounds: int) -> dict:
    model = vitjax.create_model(model_name)
    size = vitjax.get_spec(model_name).img_size
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))["params"]
    tx = optax.adamw(1e-4)
    rng = np.random.RandomState(0)
    variants = {"one batch": (batch, 1), f"{accum} x {batch // accum} accumulated": (batch, accum)}
    variants[f"one micro-batch of {batch // accum} (reference)"] = (batch // accum, 1)
    steps, data, states, rows = {}, {}, {}, {}
    for name, (n, k) in variants.items():
        step = jax.jit(
            make_train_step(model, tx, optax.constant_schedule(1e-4), _config(model_name, k), None), donate_argnums=0
        )
        images = rng.standard_normal((n, size, size, 3)).astype(np.float32)
        labels = rng.randint(0, 1000, n).astype(np.int32)
        state = TrainState(np.int32(0), jax.tree.map(np.array, params), tx.init(params))
        compiled = step.lower(state, images, labels).compile()
        rows[name] = {"images": n, "accum_steps": k, **_memory(compiled)}
        state, _ = step(state, images, labels)  # warm-up
        jax.block_until_ready(state)
        steps[name], data[name], states[name] = step, (images, labels), state
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name in variants:
            start = time.perf_counter()
            states[name], metrics = steps[name](states[name], *data[name])
            jax.block_until_ready(metrics)
            times[name].append(time.perf_counter() - start)
    for name in variants:
        rows[name]["step_s"] = statistics.median(times[name])
        rows[name]["images_per_s"] = rows[name]["images"] / rows[name]["step_s"]
    return {
        "command": f"python -m benchmarks.accumulation --model {model_name} --batch {batch} --accum {accum} --rounds {rounds}",
        "model": model_name,
        "machine": machine.describe(measure_clock=False),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()][:1],
        "jax": jax.__version__,
        "load_average": machine.load_average(),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    cpu = f"{result['machine']['cpu']} ({result['machine']['cores']} cores)"
    lines = [
        f"# Accumulated step vs one big step: {result['model']}",
        "",
        f"`{result['command']}` on {cpu} ({result['backend']}, jax {result['jax']}, load average "
        f"{result['load_average']:.1f} at the end). Memory from XLA's compiled memory analysis.",
        "",
        "| variant | images | step (s) | images/s | temp (MiB) | arguments (MiB) | total (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {r['images']} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {r['temp_mib']:.1f} "
            f"| {r['arguments_mib']:.1f} | {r['total_mib']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DeiT_tiny_patch16_224")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "accumulation"))
    args = parser.parse_args()
    result = run(args.model, args.batch, args.accum, args.rounds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
