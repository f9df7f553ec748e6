"""oneDNN's fp32 matmul inside jitted JAX code on the CPU (an XLA FFI custom call).

On the CPU, XLA's own matmul kernels reach 0.44-0.8x PyTorch's (oneDNN) at most of the shapes of
a DeiT training step, and this kernel 1.1-1.2x (``python -m benchmarks.studies.train_matmuls``): XLA copies
the transposed operand of a weight gradient ``x^T g`` where oneDNN reads it in place, and its
batched attention matmuls run at 75-100 GFLOP/s against oneDNN's ~200. This module gives the
models oneDNN's matmul instead (``model.matmul="onednn"``):

* :func:`dense_dot_general`: a drop-in ``dot_general`` for ``flax.linen.Dense``; forward and both
  gradients run oneDNN on the CPU, and XLA's ``dot_general`` on any other platform (the choice is
  made per lowering platform, so one model runs everywhere).
* :func:`batched_matmul`: the same choice for attention's batched matmuls, which
  ``layers.softmax_attention`` differentiates itself.
* :func:`attention`: softmax attention's forward in one call, from the projections' outputs as
  they are (inference: ``layers.packed_multi_head_attention``).
* :func:`matmul`: the kernel itself, ``alpha * (op(a[i]) @ op(b[i]))`` over ``[batch, rows, cols]`` arrays.
* :func:`load` / :func:`available`: the kernel library is compiled on first use (a C++ compiler
  and the ``cpu-kernels`` extra: ``pip install 'vitjax[cpu-kernels]'``) into
  ``$VITJAX_CACHE/kernels``, one directory per source, jaxlib, oneDNN, compiler and machine
  (:mod:`vitjax.kernels.build`).

The custom VJPs give reverse-mode gradients only (``jax.jvp`` through a oneDNN layer is an error;
use ``model.matmul="xla"`` for forward-mode). A model built with ``matmul="onednn"`` needs the
kernel to build wherever it is traced, even where the CPU branch is then dropped (GPU, TPU);
``model.matmul="auto"`` only picks it on a CPU.

Threads: the kernel runs on XLA's own CPU thread pool (the threads that run XLA's fused kernels):
each matmul is cut into tiles, one single-threaded oneDNN matmul each, which the calling thread
and the pool's free threads share out. oneDNN starts no OpenMP team of its own, so nothing spins
beside XLA's threads and no more threads are busy than XLA has.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vitjax.kernels.build import KernelUnavailable, build, open_library

TARGET = "vitjax_onednn_matmul"
ATTENTION_TARGET = "vitjax_onednn_attention"


def _load() -> Path:
    path = build()
    library = open_library(path)
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.VitjaxOnednnMatmul), platform="cpu")
    jax.ffi.register_ffi_target(ATTENTION_TARGET, jax.ffi.pycapsule(library.VitjaxOnednnAttention), platform="cpu")
    return path


@functools.cache
def _load_outcome() -> Path | KernelUnavailable:
    try:
        return _load()
    except KernelUnavailable as e:
        return e


def load() -> Path:
    """Builds (once per cache) and loads the kernel library, and registers its XLA FFI target.

    A failure is remembered: later calls raise the same error without building again."""
    outcome = _load_outcome()
    if isinstance(outcome, KernelUnavailable):
        raise KernelUnavailable(str(outcome))
    return outcome


def available() -> bool:
    """Whether the kernel builds and loads here (:func:`unavailable_reason` says why not)."""
    return unavailable_reason() is None


@functools.cache
def unavailable_reason() -> str | None:
    try:
        load()
    except KernelUnavailable as e:
        return str(e)
    except Exception as e:  # whatever else stops it, model.matmul=auto keeps XLA's matmuls
        return f"{type(e).__name__}: {e}"
    return None


def matmul(
    a: jax.Array, b: jax.Array, transpose_a: bool = False, transpose_b: bool = False, alpha: float = 1.0
) -> jax.Array:
    """``alpha * (op(a[i]) @ op(b[i]))`` for float32 ``[batch, rows, cols]`` arrays, by oneDNN (CPU only);
    ``alpha`` scales the float32 result in the kernel's epilogue (as a multiply after it would)."""
    load()
    if a.ndim != 3 or b.ndim != 3 or a.dtype != jnp.float32 or b.dtype != jnp.float32:
        raise ValueError(
            f"matmul takes float32 [batch, rows, cols] arrays, got {a.dtype}{list(a.shape)} and {b.dtype}{list(b.shape)}"
        )
    m, k = (a.shape[2], a.shape[1]) if transpose_a else (a.shape[1], a.shape[2])
    k_b, n = (b.shape[2], b.shape[1]) if transpose_b else (b.shape[1], b.shape[2])
    if a.shape[0] != b.shape[0] or k != k_b:
        raise ValueError(
            f"matmul shapes do not match: {list(a.shape)} (transpose {transpose_a}) @ {list(b.shape)} (transpose {transpose_b})"
        )
    out = jax.ShapeDtypeStruct((a.shape[0], m, n), jnp.float32)
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")  # under vmap: one call per mapped element
    return call(a, b, transpose_a=bool(transpose_a), transpose_b=bool(transpose_b), alpha=np.float32(alpha))


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, slots: tuple[int, int, int] = (0, 1, 2), alpha: float = 1.0
) -> jax.Array:
    """``softmax(alpha * q k^T) v`` per batch entry and head, in one call, by oneDNN (CPU only, float32).

    ``q``, ``k`` and ``v`` are projections' outputs laid out ``[batch, tokens, slots, heads,
    head_dim]``; ``slots`` says which slot of each holds q, k and v (DeiT: one ``qkv`` array three
    times, slots ``(0, 1, 2)``; TNT: ``qk, qk, v[:, :, None]``, slots ``(0, 1, 0)``). Nothing is
    transposed to a heads-major layout: each tile (a head, some batch entries, some query rows)
    copies its rows of q, k and v into a per-thread buffer, and the result comes out as ``[batch,
    tokens, heads, head_dim]``; the ``[batch, heads, tokens, tokens]`` attention weights live only
    in per-thread buffers, where their softmax is taken. Forward only (no gradient):
    ``layers.packed_multi_head_attention`` gives it one.
    """
    load()
    arrays = (q, k, v)
    if any(x.ndim != 5 or x.dtype != jnp.float32 for x in arrays):
        raise ValueError(
            "attention takes float32 [batch, tokens, slots, heads, head_dim] arrays, got "
            + ", ".join(f"{x.dtype}{list(x.shape)}" for x in arrays)
        )
    batch, tokens, _, heads, head_dim = q.shape
    for name, x, slot in zip("qkv", arrays, slots, strict=True):
        if (x.shape[:2], x.shape[3:]) != ((batch, tokens), (heads, head_dim)) or not 0 <= slot < x.shape[2]:
            raise ValueError(f"attention: {name} {list(x.shape)} (slot {slot}) does not match q {list(q.shape)}")
    out = jax.ShapeDtypeStruct((batch, tokens, heads, head_dim), jnp.float32)
    call = jax.ffi.ffi_call(ATTENTION_TARGET, out, vmap_method="sequential")
    q_slot, k_slot, v_slot = (np.int64(s) for s in slots)
    return call(q, k, v, q_slot=q_slot, k_slot=k_slot, v_slot=v_slot, alpha=np.float32(alpha))


def _xla_matmul(a: jax.Array, b: jax.Array, transpose_a: bool, transpose_b: bool, alpha: float) -> jax.Array:
    contract_a, contract_b = (1 if transpose_a else 2), (2 if transpose_b else 1)
    out = lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((0,), (0,))))  # [batch, m, n]
    return out if alpha == 1.0 else out * jnp.float32(alpha)


def batched_matmul(
    a: jax.Array, b: jax.Array, transpose_a: bool = False, transpose_b: bool = False, alpha: float = 1.0
) -> jax.Array:
    """``alpha * (op(a) @ op(b))`` over any equal leading axes (float32): oneDNN on the CPU, XLA's
    ``dot_general`` on other platforms (decided per lowering platform). Not differentiable by
    itself: callers give it a custom VJP (:func:`dense_matmul`, ``layers.softmax_attention``)."""
    lead = a.shape[:-2]
    if b.shape[:-2] != lead:
        raise ValueError(f"batched_matmul: leading axes differ, {list(a.shape)} and {list(b.shape)}")
    a3, b3 = a.reshape(math.prod(lead), *a.shape[-2:]), b.reshape(math.prod(lead), *b.shape[-2:])
    out = lax.platform_dependent(
        a3,
        b3,
        cpu=lambda x, y: matmul(x, y, transpose_a, transpose_b, alpha),
        default=lambda x, y: _xla_matmul(x, y, transpose_a, transpose_b, alpha),
    )
    return out.reshape(*lead, *out.shape[-2:])


@jax.custom_vjp
def dense_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x: [rows, in]``, ``w: [in, out]``; its gradients are oneDNN matmuls too."""
    return batched_matmul(x, w)


def _dense_matmul_fwd(x, w):
    return batched_matmul(x, w), (x, w)


def _dense_matmul_bwd(residuals, g):
    x, w = residuals
    return batched_matmul(g, w, transpose_b=True), batched_matmul(x, g, transpose_a=True)


dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general`` for ``flax.linen.Dense`` (``lhs[..., in] @ rhs[in, out]``) through oneDNN.

    Anything else (another contraction, a dtype other than float32, an explicit precision or
    result type) is passed to ``lax.dot_general`` unchanged.
    """
    (contract_l, contract_r), (batch_l, batch_r) = dimension_numbers
    plain = (
        tuple(contract_l) == (lhs.ndim - 1,)
        and tuple(contract_r) == (0,)
        and not batch_l
        and not batch_r
        and rhs.ndim == 2
        and lhs.dtype == jnp.float32
        and rhs.dtype == jnp.float32
        and precision is None
        and preferred_element_type in (None, jnp.float32)
    )
    if not plain:
        return lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type
        )
    rows = lhs.reshape(math.prod(lhs.shape[:-1]), lhs.shape[-1])
    return dense_matmul(rows, rhs).reshape(*lhs.shape[:-1], rhs.shape[1])
