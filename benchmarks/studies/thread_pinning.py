"""What pinning XLA's CPU workers does to one model's latency, with and without idle gaps.

``python -m benchmarks.studies.thread_pinning [--model DeiT_tiny_patch16_224] [--batches 1 8] [--rounds 15] [--gap-ms 300]``

One process, one jitted forward pass (``JaxPredictor``'s, NCHW in). Every round times four
calls in a rotated order: workers free or pinned one per core (``vitjax.cpu_threads``), each
right after another call ("back to back") or after ``--gap-ms`` of idle time, as a server
between requests sees it. The workers are pinned or freed just before each timed call, so
both states share the process, the weights and the compiled code. A freed worker stays where
pinning put it until the scheduler moves it, so "free, after a gap" here can understate what
an unpinned process loses (DeiT-tiny at batch 1 on 2 cores: 28 ms here, 33-34 ms in a process
that never pinned, 22 ms pinned). Prints a markdown table of medians (ms) and the pinned / free
speed-up; ``interop.deploy.JaxPredictor`` pins by default on CPU because of the "after a gap"
column (docs/deployment.md, "Backends").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

CONDITIONS = (("free", "back to back"), ("pinned", "back to back"), ("free", "after a gap"), ("pinned", "after a gap"))


def time_conditions(predict: Callable[[], object], rounds: int, gap_s: float) -> dict[tuple[str, str], float]:
    """Median seconds of ``predict()`` under each of :data:`CONDITIONS`, interleaved round by round."""
    from vitjax.cpu_threads import pin_xla_worker_threads, unpin_xla_worker_threads

    times: dict[tuple[str, str], list[float]] = {c: [] for c in CONDITIONS}
    try:
        for r in range(rounds):
            for workers, timing in CONDITIONS[r % len(CONDITIONS) :] + CONDITIONS[: r % len(CONDITIONS)]:
                pin_xla_worker_threads() if workers == "pinned" else unpin_xla_worker_threads()
                if timing == "back to back":
                    predict()  # the workers are awake and placed when the timed call starts
                else:
                    time.sleep(gap_s)
                started = time.perf_counter()
                predict()
                times[(workers, timing)].append(time.perf_counter() - started)
    finally:
        unpin_xla_worker_threads()
    return {c: statistics.median(t) for c, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DeiT_tiny_patch16_224")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--gap-ms", type=float, default=300)
    args = p.parse_args(argv)

    import jax

    import vitjax
    from benchmarks import machine
    from interop.deploy import JaxPredictor
    from vitjax.cpu_threads import process_cpus, xla_worker_threads

    size = vitjax.get_spec(args.model).img_size
    variables = jax.jit(vitjax.create_model(args.model).init)(
        jax.random.key(0), np.zeros((1, size, size, 3), np.float32)
    )
    predictor = JaxPredictor(variables, args.model, softmax=False, pin_threads=False)
    print(
        f"{args.model}: ms per call, median of {args.rounds} interleaved rounds, {args.gap_ms:.0f} ms gaps; "
        f"{len(xla_worker_threads())} XLA workers on CPUs {process_cpus()}; {machine.describe(measure_clock=False)['cpu']}\n"
    )
    print(
        "| Batch | free, back to back | pinned, back to back | free, after a gap | pinned, after a gap | pinned / free after a gap |"
    )
    print("|--:|--:|--:|--:|--:|--:|")
    for batch in args.batches:
        images = np.random.RandomState(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
        predictor.predict(images)  # compile
        ms = {
            c: t * 1e3
            for c, t in time_conditions(
                lambda images=images: predictor.predict(images), args.rounds, args.gap_ms / 1e3
            ).items()
        }
        gap_gain = ms[("free", "after a gap")] / ms[("pinned", "after a gap")]
        print(f"| {batch} | " + " | ".join(f"{ms[c]:.1f}" for c in CONDITIONS) + f" | {gap_gain:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
