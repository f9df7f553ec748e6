"""The model zoo: names, sizes, FLOPs, options and behaviour of the Flax modules."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vitjax
from vitjax.models.complexity import count

# PaddleClas's published tables (../shared/seeds): Params (M), FLOPs (G).
PADDLECLAS_TABLE = {
    "TNT_small": (23.7, 4.8),
    "TNT_base": (65.3, 13.4),
    "DeiT_tiny_patch16_224": (5.68, 1.07),
    "DeiT_small_patch16_224": (21.97, 4.24),
    "DeiT_base_patch16_224": (86.42, 16.85),
    "DeiT_base_patch16_384": (86.42, 49.35),
    "DeiT_tiny_distilled_patch16_224": (5.87, 1.08),
    "DeiT_small_distilled_patch16_224": (22.36, 4.26),
    "DeiT_base_distilled_patch16_224": (87.18, 16.93),
    "DeiT_base_distilled_patch16_384": (87.18, 49.43),
}


def test_registry_holds_exactly_the_paddleclas_models():
    assert sorted(vitjax.list_models()) == sorted(PADDLECLAS_TABLE)
    assert all(vitjax.get_spec(n).test_size for n in vitjax.list_models(include_test=True) if n not in PADDLECLAS_TABLE)


def test_unknown_model_name_lists_the_registered_ones():
    with pytest.raises(KeyError, match="DeiT_tiny_patch16_224"):
        vitjax.create_model("DeiT_tiny")


@pytest.mark.parametrize("name", sorted(PADDLECLAS_TABLE))
def test_params_and_flops_reproduce_paddleclas_table(name):
    params_m, flops_g = PADDLECLAS_TABLE[name]
    c = count(name)
    assert c.params_paddle / 1e6 == pytest.approx(params_m, rel=0.01)
    assert c.flops_paddle / 1e9 == pytest.approx(flops_g, rel=0.01)
    assert c.total_macs > c.flops_paddle  # attention matmuls on top


def test_model_table_command_prints_every_model():
    out = subprocess.run([sys.executable, "-m", "vitjax.models"], check=True, capture_output=True, text=True).stdout
    for name in PADDLECLAS_TABLE:
        assert f"| {name} |" in out
    assert "| DeiT_tiny_patch16_224 | 5.68 | 1.07 | 1.25 |" in out


def test_importing_vitjax_does_not_import_paddle():
    code = "import sys, vitjax, vitjax.models.complexity; assert 'paddle' not in sys.modules, 'paddle imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["DeiT_test_patch8_32", "DeiT_test_distilled_patch8_32", "TNT_test_patch16_32"])
def test_num_classes_and_feature_extraction(name):
    x = jnp.zeros((3, 32, 32, 3))
    model = vitjax.create_model(name, num_classes=7)
    variables = model.init(jax.random.key(0), x)
    assert model.apply(variables, x).shape == (3, 7)
    features = vitjax.create_model(name, num_classes=0)
    assert features.apply(features.init(jax.random.key(0), x), x).shape == (3, 64)


def test_distilled_model_returns_both_heads_in_training_and_their_mean_at_inference():
    model = vitjax.create_model("DeiT_test_distilled_patch8_32", num_classes=5)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    cls_logits, dist_logits = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_allclose(model.apply(variables, x), (cls_logits + dist_logits) / 2, atol=1e-6)
    assert not np.allclose(cls_logits, dist_logits)


@pytest.mark.parametrize("name", ["DeiT_test_patch8_32", "TNT_test_patch16_32"])
def test_train_mode_applies_drop_path_and_dropout(name):
    model = vitjax.create_model(name, num_classes=5, drop_path_rate=0.5, drop_rate=0.1)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    eval_a, eval_b = model.apply(variables, x), model.apply(variables, x)
    np.testing.assert_array_equal(eval_a, eval_b)  # inference is deterministic
    train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(train_a, eval_a)
    assert not np.allclose(train_a, train_b)


def test_drop_path_keeps_the_expectation():
    from vitjax.models.layers import DropPath

    x = jnp.ones((20000, 3))
    y = DropPath(0.3).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.7], rtol=1e-6)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.03)


def test_wrong_input_shape_is_a_clear_error():
    model = vitjax.create_model("DeiT_test_patch8_32")
    with pytest.raises(ValueError, match=r"expected NHWC images of shape \[batch, 32, 32, 3\], got \(1, 3, 32, 32\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))


def test_every_model_carries_its_paddleclas_eval_transform():
    deit, deit384, tnt = (
        vitjax.get_spec(n).eval_transform for n in ("DeiT_base_patch16_224", "DeiT_base_patch16_384", "TNT_small")
    )
    assert (deit.resize_short, deit.crop_size, deit.interpolation, deit.mean) == (
        256,
        224,
        "bicubic",
        (0.485, 0.456, 0.406),
    )
    assert (deit384.resize_short, deit384.crop_size) == (438, 384)
    assert (tnt.resize_short, tnt.crop_size, tnt.mean, tnt.std) == (248, 224, (0.5,) * 3, (0.5,) * 3)


def test_position_embedding_resize_keeps_prefix_tokens_and_is_identity_at_same_size():
    from vitjax.models.posemb import resize_position_embeddings

    posemb = np.random.RandomState(0).randn(1, 2 + 16, 8).astype(np.float32)
    np.testing.assert_array_equal(resize_position_embeddings(posemb, 2, 4), posemb)
    resized = resize_position_embeddings(posemb, 2, 6)
    assert resized.shape == (1, 2 + 36, 8)
    np.testing.assert_array_equal(resized[:, :2], posemb[:, :2])
    # A constant grid stays constant under bicubic resampling.
    flat = np.ones((1, 1 + 16, 4), np.float32)
    np.testing.assert_allclose(resize_position_embeddings(flat, 1, 7)[:, 1:], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="square grid"):
        resize_position_embeddings(posemb[:, :-1], 2, 6)


def test_bfloat16_compute_stays_close_to_float32():
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    f32 = vitjax.create_model("DeiT_test_patch8_32", num_classes=10)
    variables = f32.init(jax.random.key(0), x)
    bf16 = vitjax.create_model("DeiT_test_patch8_32", num_classes=10, dtype=jnp.bfloat16)
    out = bf16.apply(variables, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), f32.apply(variables, x), atol=0.1)


def test_layer_norm_gradient_is_autodiff_of_paddles_two_pass_formula():
    """Our LayerNorm's closed-form backward equals autodiff of the two-pass forward it computes."""
    from vitjax.models.layers import layer_norm

    x = jax.random.normal(jax.random.key(0), (4, 7, 48)) * 3 + 1
    norm = layer_norm(1e-6, "norm")
    params = jax.tree.map(
        lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), norm.init(jax.random.key(1), x)["params"]
    )
    weights = jax.random.normal(jax.random.key(3), x.shape)

    def two_pass(p, x):
        centered = x - x.mean(-1, keepdims=True)
        return centered / jnp.sqrt((centered * centered).mean(-1, keepdims=True) + 1e-6) * p["scale"] + p["bias"]

    ours = jax.grad(lambda p, x: jnp.sum(norm.apply({"params": p}, x) * weights), argnums=(0, 1))(params, x)
    reference = jax.grad(lambda p, x: jnp.sum(two_pass(p, x) * weights), argnums=(0, 1))(params, x)
    np.testing.assert_allclose(ours[1], reference[1], atol=1e-6)
    for key in ("scale", "bias"):
        np.testing.assert_allclose(ours[0][key], reference[0][key], atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(norm.apply({"params": params}, x), two_pass(params, x), atol=1e-6)


@pytest.mark.parametrize("matmul", ["xla", "onednn"])
@pytest.mark.parametrize("shape", [(2, 3, 17, 8), (5, 4, 16, 6)], ids=["deit-like", "tnt-inner-like"])
def test_attention_gradient_is_autodiff_of_the_softmax_formula(shape, matmul):
    """Our attention's closed-form backward equals autodiff of plain softmax attention, on XLA's
    matmuls and on oneDNN's (``vitjax.kernels.onednn``, where it builds)."""
    from vitjax.models.layers import softmax_attention

    if matmul == "onednn":
        from vitjax.kernels import onednn

        if not onednn.available():
            pytest.skip(onednn.unavailable_reason())
    attention = functools.partial(softmax_attention, matmul=matmul)
    q, k, v, weights = (jax.random.normal(jax.random.key(i), shape) * 2 for i in range(4))

    def reference(q, k, v):
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(shape[-1])
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v)

    np.testing.assert_allclose(attention(q, k, v), reference(q, k, v), atol=1e-5, rtol=1e-5)
    loss = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(attention(*a) * weights), argnums=(0, 1, 2)))
    if matmul == "onednn":  # q k^T and P V forward; dO V^T, P^T dO, dL K, dL^T Q backward
        assert loss.lower(q, k, v).as_text().count("vitjax_onednn_matmul") == 6
    ours = loss(q, k, v)[1]
    theirs = jax.grad(lambda *a: jnp.sum(reference(*a) * weights), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")
    # the CPU's multiply-and-reduce form of dK and dV equals the matmul other backends run
    from vitjax.models.layers import _sum_over_queries_matmul, _sum_over_queries_reduce

    np.testing.assert_allclose(_sum_over_queries_reduce(q, v), _sum_over_queries_matmul(q, v), atol=1e-5, rtol=1e-5)
    # bfloat16 inputs get bfloat16 gradients (the cotangent dtype must match the input's)
    low = jax.grad(lambda *a: jnp.sum(attention(*a).astype(jnp.float32)), argnums=(0, 1, 2))(
        *(t.astype(jnp.bfloat16) for t in (q, k, v))
    )
    assert all(g.dtype == jnp.bfloat16 for g in low)
    lowered = jax.jit(attention).lower(*(t.astype(jnp.bfloat16) for t in (q, k, v))).as_text()
    assert "vitjax_onednn_matmul" not in lowered  # bfloat16 stays with XLA's matmuls
