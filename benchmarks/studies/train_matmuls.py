"""The training step's matmuls, one at a time: XLA (JAX), our oneDNN custom call and PyTorch (oneDNN).

``python -m benchmarks.studies.train_matmuls [--model DeiT_tiny_patch16_224] [--batch 8] [--rounds 15]``

A training step's matmuls come in three forms per dense layer: the forward ``y = x W``, the
input gradient ``dx = g W^T`` and the weight gradient ``dW = x^T g``, which contracts the token
axis, the leading axis of both operands; attention adds batched matmuls over heads, two of them
in the backward pass again contracting the leading (query) axis. This times each form at the
model's real shapes, in one process, XLA and PyTorch interleaved (per round, a burst of
back-to-back calls of each, as inside a step, in rotated order, 50 ms apart; median over rounds),
with both libraries on the same threads. A third fp32 column is the same matmul through
``vitjax.kernels.onednn`` (oneDNN called from inside XLA, what ``model.matmul=onednn`` runs; shown
when the kernel builds here). It is
what the best kernel of each library reaches on this machine, so it separates the matmuls'
share of the gap to timm from everything else in the step (``benchmarks.studies.train_step_control``
times the whole step).

GFLOP/s are 2 x M x N x K per call; the FP32 peak is ``benchmarks.machine``'s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Matmul:
    name: str
    batch: int  # batched matmuls (heads); 1 for dense layers
    m: int
    k: int
    n: int
    transposed_lhs: bool  # contracts the leading axis of the stored left operand (x^T g)

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def step_matmuls(model: str, batch: int) -> list[Matmul]:
    """The distinct matmul forms of one transformer block of ``model`` (DeiT: its blocks; TNT: inner and outer)."""
    import vitjax

    spec = vitjax.get_spec(model)
    arch = spec.arch
    forms = []

    def dense(prefix: str, tokens: int, d_in: int, d_out: int):
        forms.extend(
            [
                Matmul(f"{prefix} forward x W", 1, tokens, d_in, d_out, False),
                Matmul(f"{prefix} input grad g W^T", 1, tokens, d_out, d_in, False),
                Matmul(f"{prefix} weight grad x^T g", 1, d_in, tokens, d_out, True),
            ]
        )

    def attention(prefix: str, groups: int, tokens: int, heads: int, head_dim: int):
        b = groups * heads
        forms.extend(
            [
                Matmul(f"{prefix} P V (forward)", b, tokens, tokens, head_dim, False),
                Matmul(f"{prefix} P^T dO (backward)", b, tokens, tokens, head_dim, True),
            ]
        )

    if spec.family == "tnt":
        words, patches = arch.num_pixel, arch.grid_size**2
        dense("inner fc1", batch * patches * words, arch.in_dim, 4 * arch.in_dim)
        attention("inner attention", batch * patches, words, arch.in_num_heads, arch.in_dim // arch.in_num_heads)
        tokens = patches + 1
    else:
        tokens = arch.grid_size**2 + arch.num_prefix_tokens
    dim = arch.embed_dim
    dense("qkv", batch * tokens, dim, 3 * dim)
    dense("fc1", batch * tokens, dim, int(dim * arch.mlp_ratio))
    dense("fc2", batch * tokens, int(dim * arch.mlp_ratio), dim)
    attention("attention", batch, tokens, arch.num_heads, dim // arch.num_heads)
    return forms


def _operands(form: Matmul, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    # Stored as the step stores them: x^T g keeps x as [tokens, d_in] and contracts its rows.
    # Dense layers are plain 2-D matmuls in the step (no batch axis), attention is batched over heads.
    batch = (form.batch,) if form.batch > 1 else ()
    lhs_shape = batch + ((form.k, form.m) if form.transposed_lhs else (form.m, form.k))
    return (rng.randn(*lhs_shape).astype(np.float32), rng.randn(*batch, form.k, form.n).astype(np.float32))


def jax_call(form: Matmul, lhs: np.ndarray, rhs: np.ndarray, bf16: bool):
    import jax
    import jax.numpy as jnp

    equation = "...km,...kn->...mn" if form.transposed_lhs else "...mk,...kn->...mn"
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    fn = jax.jit(lambda a, b: jnp.einsum(equation, a, b, preferred_element_type=jnp.float32))
    a, b = jnp.asarray(lhs, dtype), jnp.asarray(rhs, dtype)
    return lambda: jax.block_until_ready(fn(a, b))


def onednn_call(form: Matmul, lhs: np.ndarray, rhs: np.ndarray):
    """The form through ``vitjax.kernels.onednn.matmul`` inside a jitted function (fp32)."""
    import jax

    from vitjax.kernels import onednn

    batched = form.batch > 1
    fn = jax.jit(
        lambda a, b: onednn.matmul(
            a if batched else a[None], b if batched else b[None], transpose_a=form.transposed_lhs
        )[slice(None) if batched else 0]
    )
    a, b = jax.numpy.asarray(lhs), jax.numpy.asarray(rhs)
    return lambda: jax.block_until_ready(fn(a, b))


def torch_call(form: Matmul, lhs: np.ndarray, rhs: np.ndarray, bf16: bool):
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.from_numpy(lhs).to(dtype), torch.from_numpy(rhs).to(dtype)
    if form.transposed_lhs:
        return lambda: torch.matmul(a.transpose(-1, -2), b)  # a strided view: BLAS's transposed-operand flag
    return lambda: torch.matmul(a, b)


def interleaved_medians(
    calls: dict[str, object], rounds: int, gap_s: float = 0.05, sample_s: float = 0.03
) -> dict[str, float]:
    """Seconds per call, median over ``rounds``; each round times a burst of back-to-back calls per
    library (at least ``sample_s`` long, as inside a step), libraries in rotated order ``gap_s`` apart."""
    bursts = {}
    for name, fn in calls.items():
        fn(), fn()
        started = time.perf_counter()
        fn()
        bursts[name] = max(1, int(sample_s / max(time.perf_counter() - started, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(gap_s)
            fn, n = calls[name], bursts[name]
            started = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - started) / n)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DeiT_tiny_patch16_224")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--no-bf16", action="store_true")
    args = p.parse_args(argv)

    from vitjax.kernels import onednn

    ours = onednn.available()  # builds (once) and loads the kernel before torch starts its threads
    import torch

    from benchmarks import machine

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    info = machine.describe()
    peak = info["peak_fp32_flops"] / 1e9
    dtypes = [False] if args.no_bf16 else [False, True]
    print(
        f"{args.model}, batch {args.batch}: one block's matmul forms, GFLOP/s (median of {args.rounds} "
        f"interleaved rounds), {threads} threads each; {info['cpu']}; FP32 peak {peak:.0f} GFLOP/s; "
        f"PyTorch's OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n"
    )
    header = "| Matmul | batch x M x K x N | XLA fp32 | PyTorch fp32 | XLA / PyTorch |" + (
        " oneDNN call fp32 (ours) | ours / PyTorch |" if ours else ""
    )
    if len(dtypes) == 2:
        header += " XLA bf16 | PyTorch bf16 |"
    print(header)
    print("|:--|:--|--:|--:|--:|" + ("--:|--:|" if ours else "") + ("--:|--:|" if len(dtypes) == 2 else ""))
    if not ours:
        print(f"(oneDNN custom call not measured: {onednn.unavailable_reason()})")
    rng = np.random.RandomState(0)
    for form in step_matmuls(args.model, args.batch):
        lhs, rhs = _operands(form, rng)
        calls = {}
        for bf16 in dtypes:
            calls[("xla", bf16)] = jax_call(form, lhs, rhs, bf16)
            calls[("torch", bf16)] = torch_call(form, lhs, rhs, bf16)
        if ours:
            calls[("ours", False)] = onednn_call(form, lhs, rhs)
        medians = interleaved_medians(calls, args.rounds)
        rate = {key: form.flops / t / 1e9 for key, t in medians.items()}
        row = (
            f"| {form.name} | {form.batch} x {form.m} x {form.k} x {form.n} | {rate[('xla', False)]:.0f} | "
            f"{rate[('torch', False)]:.0f} | {rate[('xla', False)] / rate[('torch', False)]:.2f}x |"
        )
        if ours:
            row += f" {rate[('ours', False)]:.0f} | {rate[('ours', False)] / rate[('torch', False)]:.2f}x |"
        if len(dtypes) == 2:
            row += f" {rate[('xla', True)]:.0f} | {rate[('torch', True)]:.0f} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
