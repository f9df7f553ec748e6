"""Building blocks shared by the DeiT and TNT families.

Every layer here computes what the PaddleClas layer of the same name computes:
exact (erf) GELU, LayerNorm with the two-pass variance, softmax attention with the
``head_dim ** -0.5`` scale, and per-sample stochastic depth.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# PaddleClas initialises every Linear weight from a truncated normal (std 0.02) and
# every bias with zeros; LayerNorm gets ones and zeros.
trunc_normal = nn.initializers.truncated_normal(stddev=0.02)
Dtype = jnp.dtype | type


def gelu(x: jax.Array) -> jax.Array:
    """Paddle's ``nn.GELU()`` default: the exact, erf-based GELU."""
    return jax.nn.gelu(x, approximate=False)


def layer_norm(epsilon: float, name: str, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
    """A LayerNorm with Paddle's numerics: variance as mean((x - mean)^2), not E[x^2] - E[x]^2."""
    return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=dtype, name=name)


def dense(features: int, name: str, use_bias: bool = True, dtype: Dtype = jnp.float32) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=trunc_normal,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        name=name,
    )


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

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        x = dense(self.hidden_features, "fc1", dtype=self.dtype)(x)
        x = gelu(x)
        x = nn.Dropout(self.drop_rate)(x, deterministic=deterministic)
        x = dense(self.out_features, "fc2", dtype=self.dtype)(x)
        return nn.Dropout(self.drop_rate)(x, deterministic=deterministic)


def multi_head_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Scaled dot-product attention over ``[batch, tokens, heads, head_dim]`` inputs.

    With no attention dropout this is one fused ``jax.nn.dot_product_attention`` call
    (XLA picks the best kernel for the backend); with dropout the weights are
    materialised so the dropout can be applied to them as PaddleClas does.
    Softmax is always computed in float32.
    """
    if dropout is None:
        return jax.nn.dot_product_attention(q, k, v)
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    weights = dropout(weights)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
