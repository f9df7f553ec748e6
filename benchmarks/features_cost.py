"""What looking inside costs: ``vitjax.forward_intermediates`` against a plain forward pass, paired in one process.

``python -m benchmarks.features_cost [--models DeiT_tiny_patch16_224 TNT_small] [--batch 8] [--rounds 9]``

Jitted on the same weights and images (inference, XLA's matmuls in every variant):

* ``apply``: ``model.apply``, the logits;
* ``block k, stop early``: ``forward_intermediates(indices=[k], stop_early=True)``, for the first,
  the middle and the last block;
* ``all blocks``: every block's outputs, the final norm and the logits;
* ``all blocks + attention``: the same with every block's attention weights (the unfused path).

They run back to back in rotated order; the table gives median milliseconds and each variant's
time relative to ``apply``. Ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np


def variants(name: str, images) -> dict:
    """``{label: (compiled function of the variables, variables)}`` on one set of weights."""
    import jax

    import vitjax

    model = vitjax.create_model(name)
    variables = jax.jit(model.init)(jax.random.key(0), images[:1])
    depth = model.arch.depth
    calls = {"apply": lambda v, x: model.apply(v, x)}
    for k in sorted({0, depth // 2 - 1, depth - 1}):
        calls[f"block {k + 1}/{depth}, stop early"] = functools.partial(
            vitjax.forward_intermediates, model, indices=[k], stop_early=True
        )
    calls["all blocks"] = functools.partial(vitjax.forward_intermediates, model)
    calls["all blocks + attention"] = functools.partial(vitjax.forward_intermediates, model, attention=True)
    return {label: (jax.jit(fn).lower(variables, images).compile(), variables) for label, fn in calls.items()}


def time_rounds(compiled: dict, images, rounds: int) -> dict[str, float]:
    """Median seconds per call of each variant, one call each per round in rotated order."""
    import jax

    times = {label: [] for label in compiled}
    order = list(compiled)
    for r in range(rounds):
        for label in order[r % len(order) :] + order[: r % len(order)]:
            fn, variables = compiled[label]
            start = time.perf_counter()
            jax.block_until_ready(fn(variables, images))
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["DeiT_tiny_patch16_224", "TNT_small"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)

    import jax

    import vitjax
    from benchmarks.machine import describe

    machine = describe(measure_clock=False)
    print(
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['isa']}; "
        f"jax {jax.__version__} ({jax.default_backend()}); batch {args.batch}, median of {args.rounds} rounds\n"
    )
    print("| Model | Variant | ms | vs apply |")
    print("|:--|:--|--:|--:|")
    for name in args.models:
        size = vitjax.get_spec(name).img_size
        images = np.random.default_rng(0).standard_normal((args.batch, size, size, 3), np.float32)
        compiled = variants(name, images)
        median = time_rounds(compiled, images, args.rounds)
        for label, seconds in median.items():
            print(f"| {name} | {label} | {1e3 * seconds:.1f} | {seconds / median['apply']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
