"""Building blocks shared by the DeiT and TNT families.

Every layer here computes what the PaddleClas layer of the same name computes:
exact (erf) GELU, LayerNorm with the two-pass variance, softmax attention with the
``head_dim ** -0.5`` scale, and per-sample stochastic depth.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype

# PaddleClas initialises every Linear weight from a truncated normal (std 0.02) and
# every bias with zeros; LayerNorm gets ones and zeros.
trunc_normal = nn.initializers.truncated_normal(stddev=0.02)
Dtype = jnp.dtype | type


def gelu(x: jax.Array) -> jax.Array:
    """Paddle's ``nn.GELU()`` default, the exact GELU, in Paddle's own form ``0.5 x (1 + erf(x / sqrt 2))``.

    (``jax.nn.gelu(approximate=False)`` evaluates ``erfc`` instead, which XLA's CPU backend
    runs about 2.4x slower than ``erf``; both are within 1.2e-6 of the float64 GELU.)
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = jnp.mean(centered * centered, axis=-1, keepdims=True)  # Paddle's two-pass variance
    inv_std = jax.lax.rsqrt(variance + epsilon)
    normalized = centered * inv_std
    return normalized * scale + bias, (normalized, inv_std, scale)


def _layer_norm_bwd(epsilon, residuals, dy):
    normalized, inv_std, scale = residuals
    g = dy * scale
    dx = inv_std * (
        g - jnp.mean(g, axis=-1, keepdims=True) - normalized * jnp.mean(g * normalized, axis=-1, keepdims=True)
    )
    batch_axes = tuple(range(dy.ndim - 1))
    return dx, jnp.sum(dy * normalized, axis=batch_axes), jnp.sum(dy, axis=batch_axes)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with Paddle's numerics and a closed-form gradient.

    Forward: ``(x - mean) / sqrt(var + epsilon) * scale + bias`` with the two-pass variance
    ``mean((x - mean)^2)``, as Paddle computes it (not ``E[x^2] - E[x]^2``), in float32.
    Backward: the textbook gradient ``inv_std * (g - mean(g) - x_hat * mean(g * x_hat))`` with
    ``g = dy * scale``, from saved ``x_hat`` and ``inv_std``. It equals what autodiff gives for the
    two-pass forward (a test checks), but XLA's CPU backend compiles autodiff's version into
    transposed copies of the residual-stream gradient that re-fuse the gradient sums of every
    later block: DeiT-tiny's training step went from 920 to 590 ms at batch 8 with this one.
    Parameters ``scale`` (ones) and ``bias`` (zeros), as ``nn.LayerNorm``'s.
    """

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        y = _layer_norm(x.astype(jnp.float32), scale, bias, self.epsilon)
        return y.astype(self.dtype)


def layer_norm(epsilon: float, name: str, dtype: Dtype = jnp.float32) -> LayerNorm:
    """A LayerNorm with Paddle's numerics (see :class:`LayerNorm`)."""
    return LayerNorm(epsilon=epsilon, dtype=dtype, name=name)


MATMUL_KERNELS = ("xla", "onednn")


def dense(features: int, name: str, use_bias: bool = True, dtype: Dtype = jnp.float32, matmul: str = "xla") -> nn.Dense:
    """A Linear layer with PaddleClas's initialisers.

    ``matmul="onednn"`` computes it (forward and gradients) with oneDNN's matmul on the CPU and
    XLA's elsewhere (:mod:`vitjax.kernels.onednn`; same parameters, fp32 results equal to
    rounding); ``"xla"`` is XLA's ``dot_general`` everywhere, on the input's rows
    (:func:`rows_dot_general`).
    """
    if matmul not in MATMUL_KERNELS:
        raise ValueError(f"matmul={matmul!r}: expected one of {MATMUL_KERNELS}")
    if matmul == "onednn":
        from vitjax.kernels import onednn

        dot_general = onednn.dense_dot_general
    else:
        dot_general = rows_dot_general
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=trunc_normal,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        name=name,
        dot_general=dot_general,
    )


def rows_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general`` for ``flax.linen.Dense`` (``lhs[..., in] @ rhs[in, out]``), computed on
    ``lhs`` flattened to rows ``[prod(lead), in]`` and reshaped back; anything else unchanged.

    The same products and sums (the forward pass is the same 2-D matmul after XLA canonicalises
    it), but the kernel's gradient is then a 2-D ``rows^T @ d_out``, which XLA's CPU backend
    computes straight from both operands as they are. Differentiated through the N-D
    ``dot_general``, it contracts the ``[batch, tokens]`` axes of both, and XLA first writes a
    transposed copy ``[out, batch * tokens]`` of the output's gradient for every Linear layer: the
    digits DeiT's training step (batch 128, 17 tokens) went from 22.6 to 19.4 ms on 2 cores with
    the rows, its parameters after a step bit for bit the same.
    """
    (contract_l, contract_r), (batch_l, batch_r) = dimension_numbers
    rows = lhs.ndim > 2 and tuple(contract_l) == (lhs.ndim - 1,) and tuple(contract_r) == (0,) and rhs.ndim == 2
    if not rows or batch_l or batch_r:
        return jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type
        )
    out = jax.lax.dot_general(
        lhs.reshape(-1, lhs.shape[-1]),
        rhs,
        (((1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return out.reshape(*lhs.shape[:-1], rhs.shape[1])


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch for a random subset of samples.

    Kept samples are scaled by ``1 / keep_prob`` so the expectation is unchanged.
    ``sample_dims`` leading axes index the samples (TNT's inner transformer drops
    per patch, as PaddleClas does on its ``[batch * patches, words, dim]`` tensor).
    Uses the ``'dropout'`` RNG stream.
    """

    rate: float
    sample_dims: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep_prob = 1.0 - self.rate
        mask_shape = x.shape[: self.sample_dims] + (1,) * (x.ndim - self.sample_dims)
        keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, mask_shape)
        return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    hidden_features: int
    out_features: int
    drop_rate: float = 0.0
    dtype: Dtype = jnp.float32
    matmul: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        x = dense(self.hidden_features, "fc1", dtype=self.dtype, matmul=self.matmul)(x)
        x = gelu(x)
        x = nn.Dropout(self.drop_rate)(x, deterministic=deterministic)
        x = dense(self.out_features, "fc2", dtype=self.dtype, matmul=self.matmul)(x)
        return nn.Dropout(self.drop_rate)(x, deterministic=deterministic)


def multi_head_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
    matmul: str = "xla",
    record: Callable[[jax.Array], None] | None = None,
) -> jax.Array:
    """Scaled dot-product attention over ``[batch, tokens, heads, head_dim]`` inputs.

    Computes ``softmax(q k^T * head_dim ** -0.5) v`` per head, as PaddleClas does, with the
    softmax in float32. Heads are moved next to the batch first (``[batch, heads, tokens,
    head_dim]``), so both matmuls are plain batched matmuls with no transposes inside them.
    With no attention dropout this is :func:`softmax_attention` (normalised after the second
    matmul, closed-form gradient). With dropout the weights are materialised and dropped as
    PaddleClas does, and autodiff gives the gradient. ``matmul="onednn"`` runs the (float32)
    matmuls of :func:`softmax_attention`, forward and backward, on oneDNN on the CPU.

    ``record``, when given, is called with the attention weights ``[batch, heads, queries, keys]``
    (after the softmax, before any dropout); the weights are then materialised as with dropout.
    """
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    if dropout is None and record is None:
        out = softmax_attention(q, k, v, matmul)
    else:
        weights = attention_weights(q, k)
        if record is not None:
            record(weights)
        if dropout is not None:
            weights = dropout(weights)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
    return out.transpose(0, 2, 1, 3)


def attention_weights(q: jax.Array, k: jax.Array) -> jax.Array:
    """``softmax(q k^T * head_dim ** -0.5)`` over heads-major ``[batch, heads, tokens, head_dim]``
    inputs: ``[batch, heads, queries, keys]`` in ``q``'s dtype, the softmax taken in float32."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) * q.shape[-1] ** -0.5
    return jax.nn.softmax(logits, axis=-1).astype(q.dtype)


def packed_multi_head_attention(
    q_source: jax.Array,
    k_source: jax.Array,
    v_source: jax.Array,
    slots: tuple[int, int, int],
    dropout: Callable[[jax.Array], jax.Array] | None = None,
    matmul: str = "xla",
    record: Callable[[jax.Array], None] | None = None,
) -> jax.Array:
    """:func:`multi_head_attention` over the projections' outputs as they come out of the Linear layers.

    Each source is ``[batch, tokens, slots, heads, head_dim]`` and ``slots`` says which slot holds
    q, k and v (DeiT: ``qkv`` three times, ``(0, 1, 2)``; TNT: ``qk, qk, v[:, :, None]``, ``(0, 1,
    0)``). Returns ``[batch, tokens, heads, head_dim]``.

    With ``matmul="onednn"``, float32 and no attention dropout, the forward pass on the CPU is one
    fused oneDNN call (:func:`vitjax.kernels.onednn.attention`: q, k and v taken from the sources
    per head, the softmax of each tile's weights taken while they are in cache, no heads-major
    copies); its gradient, and everything else, is ``_packed_attention``'s: the closed-form gradient
    of :func:`multi_head_attention`'s computation, each source's gradient built in one piece
    (training computes exactly what it did without the fused call; the fused forward equals it to
    float32 rounding, normalising before the second matmul rather than after). ``record`` (see
    :func:`multi_head_attention`) always takes the unfused path, which materialises the weights.
    """
    sources, plan = _distinct_sources((q_source, k_source, v_source), slots)
    if dropout is not None or record is not None:
        q, k, v = (sources[i][:, :, slot] for i, slot in plan[0])
        return multi_head_attention(q, k, v, dropout, matmul, record)
    if matmul not in MATMUL_KERNELS:
        raise ValueError(f"matmul={matmul!r}: expected one of {MATMUL_KERNELS}")
    float32 = all(source.dtype == jnp.float32 for source in sources)
    if matmul == "onednn" and float32:
        return _fused_attention(plan, *sources)
    return _packed_attention(False, plan, *sources)


def _distinct_sources(sources, slots) -> tuple[tuple[jax.Array, ...], tuple]:
    """The distinct arrays among q's, k's and v's sources (DeiT passes one ``qkv`` three times) and
    the plan ``(((source index, slot) for q, k, v), (slots of each distinct source))`` that finds
    each of q, k and v in them."""
    distinct: list[jax.Array] = []
    plan = []
    for source, slot in zip(sources, slots, strict=True):
        index = next((i for i, seen in enumerate(distinct) if seen is source), None)
        if index is None:
            index = len(distinct)
            distinct.append(source)
        plan.append((index, int(slot)))
    return tuple(distinct), (tuple(plan), tuple(source.shape[2] for source in distinct))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _packed_attention(use_onednn: bool, plan, *sources):
    """:func:`softmax_attention` of the q, k and v that ``plan`` finds in ``sources``, taken from
    and returned to the tokens-major ``[batch, tokens, heads, head_dim]`` layout.

    The gradient is :func:`softmax_attention`'s closed form, and each source's gradient is built
    in one piece: the q, k and v gradients moved back to tokens-major and stacked into their slots
    (zeros in a slot nothing reads). Autodiff of the slicing would instead pad each gradient to the
    source's full shape and add the padded copies, several passes over ``[batch, tokens, 3, heads,
    head_dim]`` that cost DeiT on digits (17 tokens) about as much as its attention matmuls. The
    values are the same: the padded copies add exact zeros.
    """
    return _packed_attention_fwd(use_onednn, plan, *sources)[0]


def _packed_attention_fwd(use_onednn, plan, *sources):
    q, k, v = (sources[i][:, :, slot].transpose(0, 2, 1, 3) for i, slot in plan[0])
    out, residuals = _softmax_attention_fwd(use_onednn, q, k, v)
    return out.transpose(0, 2, 1, 3), residuals


def _packed_attention_bwd(use_onednn, plan, residuals, d_out):
    grads = _softmax_attention_bwd(use_onednn, residuals, d_out.transpose(0, 2, 1, 3))
    by_slot: dict[tuple[int, int], jax.Array] = {}
    for (i, slot), grad in zip(plan[0], grads, strict=True):
        grad = grad.transpose(0, 2, 1, 3)
        by_slot[i, slot] = by_slot[i, slot] + grad if (i, slot) in by_slot else grad
    d_sources = []
    for i, num_slots in enumerate(plan[1]):
        present = [g for (j, _), g in by_slot.items() if j == i]
        zeros = jnp.zeros_like(present[0]) if present else None
        d_sources.append(jnp.stack([by_slot.get((i, slot), zeros) for slot in range(num_slots)], axis=2))
    return tuple(d_sources)


_packed_attention.defvjp(_packed_attention_fwd, _packed_attention_bwd)


def _unfused_attention(plan, *sources):
    return _packed_attention(True, plan, *sources)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_attention(plan, *sources):
    from vitjax.kernels import onednn

    (qi, q_slot), (ki, k_slot), (vi, v_slot) = plan[0]
    scale = sources[qi].shape[-1] ** -0.5
    return jax.lax.platform_dependent(
        *sources,
        cpu=lambda *s: onednn.attention(s[qi], s[ki], s[vi], (q_slot, k_slot, v_slot), scale),
        default=functools.partial(_unfused_attention, plan),
    )


def _fused_attention_fwd(plan, *sources):
    # Differentiated, the unfused attention runs (and its closed-form backward); its VJP
    # closure carries the residuals.
    return jax.vjp(functools.partial(_unfused_attention, plan), *sources)


def _fused_attention_bwd(plan, vjp, d_out):
    return vjp(d_out)


_fused_attention.defvjp(_fused_attention_fwd, _fused_attention_bwd)


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, matmul: str = "xla") -> jax.Array:
    """``softmax(q k^T * head_dim ** -0.5) v`` over heads-major ``[batch, heads, tokens, head_dim]``.

    Forward: ``(exp(l - max l) v) / sum exp(l - max l)``, the softmax-weighted sum with one
    division per output element (``head_dim`` per query) instead of one per attention weight
    (``tokens`` per query); the softmax is in float32.
    Backward: the closed-form gradient from the saved weights ``P`` and output ``O``:
    ``dV = P^T dO``, ``dL = P * (dO V^T - rowsum(dO * O)) * scale``, ``dQ = dL K``, ``dK = dL^T Q``.
    It equals autodiff's gradient (a test checks), but autodiff differentiates through the
    max shift and the late normalisation; on XLA's CPU backend the closed form runs the
    attention's forward and backward 1.6-1.8x faster (DeiT and TNT shapes, batch 8).
    With ``matmul="onednn"`` (float32 only) all six matmuls are oneDNN's on the CPU
    (:func:`vitjax.kernels.onednn.batched_matmul`), which reads the transposed operands of
    ``P^T dO`` and ``dL^T Q`` in place.
    """
    if matmul not in MATMUL_KERNELS:
        raise ValueError(f"matmul={matmul!r}: expected one of {MATMUL_KERNELS}")
    use_onednn = matmul == "onednn" and q.dtype == k.dtype == v.dtype == jnp.float32
    return _softmax_attention(use_onednn, q, k, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _softmax_attention(use_onednn: bool, q, k, v):
    return _softmax_attention_fwd(use_onednn, q, k, v)[0]


def _attention_matmul(use_onednn: bool, equation: str, a: jax.Array, b: jax.Array, scale: float = 1.0) -> jax.Array:
    """One of attention's matmuls over ``[batch, heads, ...]``, by its einsum equation, times
    ``scale`` (float32 result; oneDNN applies it in the matmul's epilogue, sparing a pass)."""
    if not use_onednn:
        if equation == "bhqk,bhqd->bhkd":
            out = _sum_over_queries(a, b)
        else:
            out = jnp.einsum(equation, a, b)
        return out if scale == 1.0 else out.astype(jnp.float32) * scale
    from vitjax.kernels import onednn

    transpose_a, transpose_b = _ATTENTION_TRANSPOSES[equation]
    return onednn.batched_matmul(a, b, transpose_a, transpose_b, alpha=scale)


_ATTENTION_TRANSPOSES = {  # equation: (transpose a, transpose b) of the matching [.., rows, cols] matmul
    "bhqd,bhkd->bhqk": (False, True),
    "bhqk,bhkd->bhqd": (False, False),
    "bhqk,bhqd->bhkd": (True, False),
}


def _softmax_attention_fwd(use_onednn, q, k, v):
    logits = _attention_matmul(use_onednn, "bhqd,bhkd->bhqk", q, k, q.shape[-1] ** -0.5).astype(jnp.float32)
    unnormalized = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    total = jnp.sum(unnormalized, axis=-1, keepdims=True)
    out = _attention_matmul(use_onednn, "bhqk,bhkd->bhqd", unnormalized.astype(v.dtype), v)
    out = (out.astype(jnp.float32) / total).astype(v.dtype)
    return out, (q, k, v, unnormalized / total, out)


def _softmax_attention_bwd(use_onednn, residuals, d_out):
    q, k, v, weights, out = residuals
    d_v = _attention_matmul(use_onednn, "bhqk,bhqd->bhkd", weights.astype(v.dtype), d_out)
    d_weights = _attention_matmul(use_onednn, "bhqd,bhkd->bhqk", d_out, v).astype(jnp.float32)
    # sum_k P_qk dP_qk, computed as sum_d dO_qd O_qd (the same quantity, head_dim terms per query)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_logits = (weights * (d_weights - delta) * q.shape[-1] ** -0.5).astype(q.dtype)
    d_q = _attention_matmul(use_onednn, "bhqk,bhkd->bhqd", d_logits, k)
    d_k = _attention_matmul(use_onednn, "bhqk,bhqd->bhkd", d_logits, q)
    return d_q, d_k, d_v


def _sum_over_queries(a: jax.Array, b: jax.Array) -> jax.Array:
    """``sum_q a[..., q, k] b[..., q, d]``: a batched matmul, or on CPU one fused multiply-and-reduce.

    The matmul contracts the leading (row) axis of both operands, which XLA's CPU backend hands
    to Eigen rather than its YNNPACK kernels: 3x slower for TNT's 16-word inner attention and
    1.3-1.5x for DeiT's 197 tokens than the fused reduction. GPUs and TPUs keep the matmul.
    """
    return jax.lax.platform_dependent(a, b, cpu=_sum_over_queries_reduce, default=_sum_over_queries_matmul)


def _sum_over_queries_reduce(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(a[..., :, :, None] * b[..., :, None, :], axis=-3)


def _sum_over_queries_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum("...qk,...qd->...kd", a, b)


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


class ConvAsMatmul(nn.Conv):
    """A convolution applied as one matmul to windows the caller has already laid out.

    Takes ``windows[..., kh, kw, in]`` (one convolution window per leading index) and returns
    ``[..., features]``. It is an ``nn.Conv``: the same parameters (``kernel`` [kh, kw, in,
    out], ``bias``), initialisers and dtype handling, and FLOP counters that recognise Conv
    layers count it as one. A convolution whose windows are cheap to lay out (non-overlapping
    patches; TNT's 4x4 windows inside each 16x16 patch) then runs as a single large matmul
    instead of a convolution over many tiny images, which XLA's CPU backend runs several
    times slower.
    """

    @nn.compact
    def __call__(self, windows: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        cin = windows.shape[-1]
        if windows.shape[-3:-1] != (kh, kw):
            raise ValueError(f"windows of shape {windows.shape} do not end in the kernel window ({kh}, {kw}, in)")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, cin, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        windows, kernel, bias = promote_dtype(windows, kernel, bias, dtype=self.dtype)
        lead = windows.shape[:-3]
        y = jnp.dot(windows.reshape(*lead, kh * kw * cin), kernel.reshape(kh * kw * cin, self.features))
        return y if bias is None else y + bias


def check_image_size(images: jax.Array, img_size: int, in_chans: int) -> None:
    """Our models take NHWC images of the size they were created for; say so clearly."""
    if images.ndim != 4 or images.shape[1:] != (img_size, img_size, in_chans):
        raise ValueError(
            f"expected NHWC images of shape [batch, {img_size}, {img_size}, {in_chans}], got {tuple(images.shape)}"
        )


def check_num_blocks(num_blocks: int | None, depth: int) -> None:
    """``num_blocks`` (run only the first blocks) must be ``None`` or between 0 and ``depth``."""
    if num_blocks is not None and not 0 <= num_blocks <= depth:
        raise ValueError(f"num_blocks={num_blocks}: the model has {depth} blocks (allowed 0 to {depth})")
