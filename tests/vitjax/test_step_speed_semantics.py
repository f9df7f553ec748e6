"""What the training step's faster formulations compute: exactly what the plain ones compute.

The packed attention (``layers.packed_multi_head_attention``) builds the gradient of its
projections' output in one piece instead of letting autodiff pad each of q's, k's and v's
gradients to the full ``qkv`` shape and add them; ``layers.dense`` multiplies its input's rows
(2-D) rather than the N-D input. Neither may change what is computed.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.models.layers import multi_head_attention, packed_multi_head_attention


def _inputs(batch, tokens, heads, head_dim, slots):
    keys = jax.random.split(jax.random.key(0), 3)
    source = jax.random.normal(keys[0], (batch, tokens, slots, heads, head_dim)) * 2
    extra = jax.random.normal(keys[1], (batch, tokens, 1, heads, head_dim))
    weights = jax.random.normal(keys[2], (batch, tokens, heads, head_dim))
    return source, extra, weights


@pytest.mark.parametrize("shape", [(4, 17, 4, 16), (3, 5, 3, 8)], ids=["digits-deit", "odd"])
def test_packed_attention_gradient_equals_autodiff_of_the_slices_deit_layout(shape):
    qkv, _, weights = _inputs(*shape, slots=3)
    packed = lambda x: packed_multi_head_attention(x, x, x, (0, 1, 2))  # noqa: E731
    sliced = lambda x: multi_head_attention(x[:, :, 0], x[:, :, 1], x[:, :, 2])  # noqa: E731
    loss = jax.jit(jax.value_and_grad(lambda x, f: jnp.sum(f(x) * weights)), static_argnums=1)
    (value, grad), (ref_value, ref_grad) = loss(qkv, packed), loss(qkv, sliced)
    assert float(value) == float(ref_value)
    np.testing.assert_array_equal(grad, ref_grad)
    # the gradient is built in one piece: no padded copies of q's, k's and v's gradients
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(packed(x) * weights))).lower(qkv).as_text()
    assert re.search(r"\bstablehlo\.pad\b", hlo) is None


def test_packed_attention_gradient_equals_autodiff_of_the_slices_tnt_layout():
    qk, v, weights = _inputs(6, 16, 4, 6, slots=2)
    packed = lambda qk, v: packed_multi_head_attention(qk, qk, v, (0, 1, 0))  # noqa: E731
    sliced = lambda qk, v: multi_head_attention(qk[:, :, 0], qk[:, :, 1], v[:, :, 0])  # noqa: E731
    loss = jax.jit(jax.value_and_grad(lambda a, b, f: jnp.sum(f(a, b) * weights), argnums=(0, 1)), static_argnums=2)
    (value, grads), (ref_value, ref_grads) = loss(qk, v, packed), loss(qk, v, sliced)
    assert float(value) == float(ref_value)
    for grad, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_array_equal(grad, ref)


def test_packed_attention_with_distinct_sources_for_q_k_and_v():
    q, _, weights = _inputs(2, 7, 2, 4, slots=1)
    k, v = q * 0.5 - 1.0, q[:, ::-1] + 0.25
    packed = lambda q, k, v: packed_multi_head_attention(q, k, v, (0, 0, 0))  # noqa: E731
    sliced = lambda q, k, v: multi_head_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])  # noqa: E731
    loss = jax.jit(jax.grad(lambda a, b, c, f: jnp.sum(f(a, b, c) * weights), argnums=(0, 1, 2)), static_argnums=3)
    for grad, ref in zip(loss(q, k, v, packed), loss(q, k, v, sliced), strict=True):
        np.testing.assert_array_equal(grad, ref)


@pytest.mark.parametrize("shape", [(8, 17, 64), (2, 3, 16, 24), (5, 12)], ids=["tokens", "tnt-words", "rows"])
def test_dense_on_rows_computes_what_the_n_d_dot_general_computes(shape):
    """``layers.dense`` (``matmul="xla"``) multiplies the input's rows; outputs and gradients are
    ``flax.linen.Dense``'s with ``lax.dot_general`` on the N-D input."""
    import flax.linen as nn

    from vitjax.models.layers import dense

    x = jax.random.normal(jax.random.key(0), shape)
    ours, plain = dense(48, "fc"), nn.Dense(48, name="fc")
    params = ours.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, plain.init(jax.random.key(1), x))
    weights = jax.random.normal(jax.random.key(2), (*shape[:-1], 48))

    def loss(module):
        return jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(module.apply(p, x) * weights), argnums=(0, 1)))

    (value, grads), (ref_value, ref_grads) = loss(ours)(params, x), loss(plain)(params, x)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for grad, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-6)
