"""Our training step against a plain Flax ViT of the same size and against timm, in one process.

``python -m benchmarks.studies.train_step_control [--model DeiT_tiny_patch16_224] [--batch 8] [--rounds 5] [--profile] [--matmul xla|onednn]``

The control is a ViT written with Flax's library layers only (``nn.Conv`` patches,
``nn.MultiHeadDotProductAttention``, ``nn.LayerNorm``, ``nn.gelu``), with our model's width,
depth and heads: it separates what our model's code costs from what XLA's CPU backend costs
(plain DeiT models only; TNT and distilled models are timed against timm alone).
Each variant's forward, gradient and full step (gradient + AdamW, buffers donated) are timed in
interleaved rounds; the table gives medians. ``--profile`` also prints where our model's
gradient spends its time: XLA's kernels (a per-thunk profile through ``jax.profiler``) summed by
the model op each one comes from (from the optimized HLO's metadata), forward and backward
apart, then the most expensive single kernels. That is how the transposed residual-gradient
copies and the attention backward in docs/performance.md were found. Kernel times overlap where XLA runs
independent kernels concurrently, and Eigen matmuls are timed at dispatch, so read the
table as a ranking, not as a breakdown of the wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import statistics
import tempfile
import time

import numpy as np


def control_vit(dim: int, depth: int, heads: int):
    import flax.linen as nn
    import jax.numpy as jnp

    class ControlViT(nn.Module):
        """A ViT from Flax's library layers (the control)."""

        @nn.compact
        def __call__(self, images, train: bool = False):
            x = nn.Conv(dim, (16, 16), (16, 16))(images)
            batch = x.shape[0]
            x = x.reshape(batch, -1, dim)
            cls = self.param("cls", nn.initializers.zeros, (1, 1, dim))
            x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, dim)), x], 1)
            x = x + self.param("pos", nn.initializers.normal(0.02), (1, x.shape[1], dim))
            for _ in range(depth):
                h = nn.LayerNorm(1e-6)(x)
                x = x + nn.MultiHeadDotProductAttention(heads)(h, h)
                h = nn.LayerNorm(1e-6)(x)
                x = x + nn.Dense(dim)(nn.gelu(nn.Dense(4 * dim)(h), approximate=False))
            return nn.Dense(1000)(nn.LayerNorm(1e-6)(x)[:, 0])

    return ControlViT()


def jax_variant(model, images, labels):
    """``{"fwd", "grad", "step"}`` callables for a Flax classifier."""
    import jax
    import jax.numpy as jnp
    import optax

    tx = optax.adamw(1e-4, weight_decay=0.05)
    params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]

    def loss_fn(p):
        out = model.apply({"params": p}, images, train=True)
        if isinstance(out, tuple):
            out = (out[0] + out[1]) / 2
        return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    fwd, grad, step = jax.jit(loss_fn), jax.jit(jax.grad(loss_fn)), jax.jit(step, donate_argnums=(0, 1))
    state = [jax.tree.map(jnp.copy, params), tx.init(params)]

    def run_step():
        state[0], state[1], loss = step(*state)
        return loss

    return {"fwd": lambda: fwd(params), "grad": lambda: grad(params), "step": run_step}, (grad, params)


def timm_variant(model_name: str, images: np.ndarray, labels: np.ndarray):
    import timm
    import torch

    from benchmarks.timm_peer import timm_name

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = timm.create_model(timm_name(model_name))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4, weight_decay=0.05)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(labels.astype(np.int64))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def fwd():
        with torch.no_grad():
            model(x)

    return {"fwd": fwd, "step": step}


def kernel_times(grad, params, calls: int = 3) -> dict[str, float]:
    """ms per call of every XLA thunk of ``grad(params)`` (needs ``--xla_cpu_enable_xprof_traceme``)."""
    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as trace:
        jax.block_until_ready(grad(params))
        jax.profiler.start_trace(trace)
        for _ in range(calls):
            jax.block_until_ready(grad(params))
        jax.profiler.stop_trace()
        data = ProfileData.from_file(sorted(glob.glob(f"{trace}/**/*.xplane.pb", recursive=True))[-1])
    totals = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                name = event.name
                if "fusion" in name or name.startswith(("dot", "copy", "transpose", "reduce", "wrapped")):
                    totals[name] += event.duration_ns / calls / 1e6
    return dict(totals)


PROFILED = "our_gradient"  # the name of the jitted function profiled, and so of its HLO module


def hlo_op_names(dump_dir: str, module: str = PROFILED) -> dict[str, str]:
    """Instruction name -> the model op it came from (``op_name`` metadata), from ``module``'s optimized HLO."""
    dumps = glob.glob(os.path.join(dump_dir, f"*{module}*after_optimizations.txt"))
    if not dumps:
        return {}
    names = {}
    for line in open(max(dumps, key=os.path.getsize)):
        instruction = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        if instruction and op_name:
            names[instruction.group(1)] = op_name.group(1)
    return names


def by_model_op(kernels: dict[str, float], op_names: dict[str, str]) -> list[tuple[str, str, float]]:
    """(forward/backward, model op with block numbers folded, ms) summed over kernels, largest first."""
    totals = collections.Counter()
    for kernel, ms in kernels.items():
        op = op_names.get(kernel, kernel)
        direction = "backward" if "transpose(" in op else "forward"
        op = re.sub(r"jit\(\w+\)/|(transpose\()?jvp\(|\)", "", op)
        totals[(direction, re.sub(r"_\d+/", "_N/", op))] += ms
    return [(direction, op, ms) for (direction, op), ms in totals.most_common()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DeiT_tiny_patch16_224")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument(
        "--matmul", default="xla", help="our model's dense matmuls: xla or onednn (what training on one CPU runs)"
    )
    args = p.parse_args(argv)
    dump_dir = tempfile.mkdtemp(prefix="train_step_hlo_") if args.profile else None
    if args.profile:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
            f" --xla_dump_to={dump_dir} --xla_dump_hlo_as_text"
            f" --xla_dump_hlo_module_re=.*{PROFILED}.*"
        )

    import jax
    import jax.numpy as jnp

    import vitjax

    spec = vitjax.get_spec(args.model)
    size = spec.img_size
    images = np.random.RandomState(0).randn(args.batch, size, size, 3).astype(np.float32)
    labels = (np.arange(args.batch) % 1000).astype(np.int32)
    arch = spec.arch
    ours, (grad, params) = jax_variant(
        vitjax.create_model(args.model, matmul=args.matmul), jnp.asarray(images), jnp.asarray(labels)
    )
    variants = {"vitjax": ours}
    if spec.family == "deit" and not spec.distilled:  # the control is a plain ViT
        variants["Flax ViT (control)"] = jax_variant(
            control_vit(arch.embed_dim, arch.depth, arch.num_heads), jnp.asarray(images), jnp.asarray(labels)
        )[0]
    if not args.no_timm:
        variants["timm eager"] = timm_variant(args.model, images, labels)

    def call(fn):
        jax.block_until_ready(fn())

    cells = {(v, k): [] for v, fns in variants.items() for k in fns}
    for v, k in cells:
        call(variants[v][k])
        call(variants[v][k])
    for _ in range(args.rounds):
        for v, k in cells:
            started = time.perf_counter()
            call(variants[v][k])
            cells[(v, k)].append(time.perf_counter() - started)
    print(f"{args.model}, batch {args.batch}, median of {args.rounds} interleaved rounds, ms (img/s)\n")
    print("| Variant | forward | gradient | step (gradient + AdamW) |\n|:--|--:|--:|--:|")
    for v in variants:
        row = []
        for k in ("fwd", "grad", "step"):
            if (v, k) in cells:
                m = statistics.median(cells[(v, k)])
                row.append(f"{m * 1e3:.0f} ({args.batch / m:.1f})")
            else:
                row.append("n/a")
        print(f"| {v} | " + " | ".join(row) + " |")
    if args.profile:

        def our_gradient(p):
            return grad(p)

        our_gradient.__name__ = PROFILED  # its own HLO module: the control's gradient is a `loss_fn` too
        kernels = kernel_times(jax.jit(our_gradient), params)
        print(f"\nOur gradient's XLA kernels by model op, ms per call (sum of kernels {sum(kernels.values()):.0f} ms):")
        for direction, op, ms in by_model_op(kernels, hlo_op_names(dump_dir))[:30]:
            print(f"{ms:8.1f}  {direction:8s}  {op}")
        print("\nMost expensive single kernels, ms per call:")
        for name, ms in collections.Counter(kernels).most_common(15):
            print(f"{ms:8.2f}  {name}")
        shutil.rmtree(dump_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
