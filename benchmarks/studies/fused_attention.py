"""The fused oneDNN attention against the unfused one and against XLA's matmuls, paired in one process.

``python -m benchmarks.studies.fused_attention [--models DeiT_tiny_patch16_224 ...] [--batches 1 8] [--rounds 15]``

Three jitted forward passes of the same model and weights (inference, CPU):

* ``fused``: ``matmul="onednn"`` as the predictor runs it: dense layers on oneDNN's matmul, each
  block's attention one fused call (``vitjax.kernels.onednn.attention``);
* ``unfused``: the same, with the attention as it runs under ``jax.grad`` (heads-major copies, two
  oneDNN batched matmuls, XLA's softmax between them);
* ``xla``: ``matmul="xla"``, XLA's matmuls and XLA's attention.

They are timed back to back in rotated order, XLA's CPU workers pinned as the ``jax`` predictor
pins them; the table gives median milliseconds and each variant's speed relative to ``fused``,
and the largest logit difference from ``fused``. Ratios in one run are what to compare: this
machine's absolute speed drifts between minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np

VARIANTS = ("fused", "unfused", "xla")


@contextlib.contextmanager
def unfused_attention():
    """Models traced inside run their oneDNN attention unfused (the path ``jax.grad`` takes)."""
    from vitjax.models import layers

    fused = layers._fused_attention
    layers._fused_attention = lambda plan, *sources: layers._unfused_attention(plan, *sources)
    try:
        yield
    finally:
        layers._fused_attention = fused


def compile_variants(name: str, images) -> dict:
    """``{variant: (compiled forward, variables)}``: the same weights in every variant."""
    import jax

    import vitjax

    compiled = {}
    for variant in VARIANTS:
        model = vitjax.create_model(name, matmul="xla" if variant == "xla" else "onednn")
        variables = jax.jit(model.init)(jax.random.key(0), images[:1])
        with unfused_attention() if variant == "unfused" else contextlib.nullcontext():
            compiled[variant] = (jax.jit(model.apply).lower(variables, images).compile(), variables)
    return compiled


def time_rounds(compiled: dict, images, rounds: int) -> dict[str, float]:
    """Median seconds per call of each variant, one call each per round in rotated order."""
    times = {variant: [] for variant in compiled}
    order = list(compiled)
    for r in range(rounds):
        for variant in order[r % len(order) :] + order[: r % len(order)]:
            fn, variables = compiled[variant]
            start = time.perf_counter()
            fn(variables, images).block_until_ready()
            times[variant].append(time.perf_counter() - start)
    return {variant: statistics.median(t) for variant, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["DeiT_tiny_patch16_224", "DeiT_base_patch16_224", "TNT_small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-pin", action="store_true", help="leave XLA's CPU workers unpinned")
    args = parser.parse_args(argv)

    import jax

    import vitjax
    from benchmarks.machine import describe
    from vitjax.cpu_threads import pin_xla_worker_threads
    from vitjax.kernels import onednn

    if jax.default_backend() != "cpu":
        raise SystemExit("benchmarks.studies.fused_attention compares CPU kernels; run it on a CPU backend")
    onednn.load()
    machine = describe(measure_clock=False)
    print(f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['isa']}; jax {jax.__version__}\n")
    print(
        "| Model | Batch | fused (ms) | unfused (ms) | XLA's matmuls (ms) | fused / unfused speed | fused / XLA speed | max abs logit diff (unfused, XLA) |"
    )
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    pinned = args.no_pin
    for name in args.models:
        for batch in args.batches:
            size = vitjax.get_spec(name).img_size
            images = np.random.default_rng(0).standard_normal((batch, size, size, 3), np.float32)
            compiled = compile_variants(name, images)
            if not pinned:
                pin_xla_worker_threads()
                pinned = True
            logits = {v: np.asarray(fn(variables, images)) for v, (fn, variables) in compiled.items()}
            diff = [float(np.abs(logits[v] - logits["fused"]).max()) for v in ("unfused", "xla")]
            median = time_rounds(compiled, images, args.rounds)
            ms = {v: 1e3 * t for v, t in median.items()}
            print(
                f"| {name} | {batch} | {ms['fused']:.1f} | {ms['unfused']:.1f} | {ms['xla']:.1f} | "
                f"{ms['unfused'] / ms['fused']:.3f}x | {ms['xla'] / ms['fused']:.3f}x | {diff[0]:.1e}, {diff[1]:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
