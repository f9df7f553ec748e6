"""Looking inside: ``vitjax.forward_intermediates`` (features of any block, early stop, attention
weights) and attention rollout, on the test-size models. Checked against timm in
``test_features_timm.py``; here, what holds without timm."""

import functools

import jax
import numpy as np
import pytest
from testutil import nhwc, random_images

import vitjax
from vitjax.models.features import attention_rollout, class_token_rollout, forward_intermediates, take_indices

MODELS = ("DeiT_test_patch8_32", "DeiT_test_distilled_patch8_32", "TNT_test_patch16_32")
ATOL = 1e-5


@functools.cache
def _setup(name):
    model = vitjax.create_model(name)
    images = nhwc(random_images(name, batch=2, seed=1))
    return model, jax.jit(model.init)(jax.random.key(0), images), images


def test_indices_are_read_as_timm_reads_them():
    assert take_indices(12, None) == tuple(range(12))
    assert take_indices(12, 3) == (9, 10, 11)  # an int: the last n blocks
    assert take_indices(12, [0, -1, 5]) == (0, 5, 11)  # a list: those blocks, negative from the end
    assert take_indices(12, (-1, 11)) == (11,)
    assert take_indices(12, np.int64(2)) == take_indices(12, [np.int64(10), -1]) == (10, 11)  # numpy ints too


@pytest.mark.parametrize(
    "indices, message",
    [
        (0, r"indices=0: the last n blocks needs n from 1 to 12"),
        (13, r"indices=13: .* from 1 to 12"),
        ([12], r"block index 12 is out of range: the model has 12 blocks \(allowed -12 to 11\)"),
        ([-13], r"block index -13 is out of range"),
        ([], r"name at least one block"),
        ("3", r"expected an int .* or a list"),
    ],
)
def test_indices_out_of_range_name_the_value_and_the_allowed_range(indices, message):
    with pytest.raises(ValueError, match=message):
        take_indices(12, indices)


@pytest.mark.parametrize("name", MODELS)
def test_every_view_of_a_block_is_the_same_tokens(name):
    model, variables, images = _setup(name)
    out = forward_intermediates(model, variables, images)
    arch = model.arch
    assert list(out.tokens) == list(range(arch.depth))
    for i, tokens in out.tokens.items():
        batch, length, dim = tokens.shape
        assert length == arch.num_prefix_tokens + arch.grid_size**2
        assert out.grid[i].shape == (batch, arch.grid_size, arch.grid_size, dim)  # NHWC
        np.testing.assert_array_equal(out.prefix[i], tokens[:, : arch.num_prefix_tokens])
        # grid[r, c] is patch r * side + c, after the prefix tokens
        np.testing.assert_array_equal(out.grid[i][:, 1, 0], tokens[:, arch.num_prefix_tokens + arch.grid_size])
    if name.startswith("TNT"):
        assert out.pixels[0].shape == (2, arch.grid_size**2, arch.num_pixel, arch.in_dim)
    else:
        assert out.pixels == {}


@pytest.mark.parametrize("name", MODELS)
def test_final_outputs_are_what_apply_computes(name):
    model, variables, images = _setup(name)
    out = forward_intermediates(model, variables, images, 1)
    np.testing.assert_allclose(out.logits, model.apply(variables, images), rtol=0, atol=ATOL)
    headless = vitjax.create_model(name, num_classes=0)
    params = {k: v for k, v in variables["params"].items() if not k.startswith("head")}
    np.testing.assert_allclose(out.pre_logits, headless.apply({"params": params}, images), rtol=0, atol=ATOL)
    assert out.features.shape == out.tokens[model.arch.depth - 1].shape


@pytest.mark.parametrize("name", MODELS)
def test_stop_early_runs_no_block_after_the_last_one_asked_for(name):
    model, variables, images = _setup(name)
    full = forward_intermediates(model, variables, images, [0])
    # Without the later blocks' parameters the early-stopping run still works: they never ran.
    params = {k: v for k, v in variables["params"].items() if not k.startswith("blocks_1")}
    early = forward_intermediates(model, {"params": params}, images, [0], stop_early=True, attention=True)
    np.testing.assert_allclose(early.tokens[0], full.tokens[0], rtol=0, atol=ATOL)
    assert early.features is early.pre_logits is early.logits is None
    assert list(early.attention) == [0]
    with pytest.raises(Exception, match="blocks_1"):
        forward_intermediates(model, {"params": params}, images, [0])


@pytest.mark.parametrize("name", MODELS)
def test_jitted_equals_eager(name):
    model, variables, images = _setup(name)
    jitted = jax.jit(forward_intermediates, static_argnums=(0, 3), static_argnames=("stop_early", "attention"))
    eager = forward_intermediates(model, variables, images, (-1,), attention=True)
    compiled = jitted(model, variables, images, (-1,), attention=True)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", MODELS)
def test_attention_weights_are_softmax_rows_and_leave_the_outputs_unchanged(name):
    model, variables, images = _setup(name)
    plain = forward_intermediates(model, variables, images)
    out = forward_intermediates(model, variables, images, attention=True)
    arch = model.arch
    tokens = arch.num_prefix_tokens + arch.grid_size**2
    assert list(out.attention) == list(range(arch.depth))
    for weights in out.attention.values():
        assert weights.shape == (2, arch.num_heads, tokens, tokens)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    for weights in out.pixel_attention.values():  # TNT's inner attention, per patch
        assert weights.shape == (2, arch.grid_size**2, arch.in_num_heads, arch.num_pixel, arch.num_pixel)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert bool(out.pixel_attention) == name.startswith("TNT")
    np.testing.assert_allclose(out.logits, plain.logits, rtol=0, atol=ATOL)
    assert plain.attention == {}


def test_rollout_of_one_block_is_half_head_mean_half_identity():
    weights = jax.nn.softmax(jax.random.normal(jax.random.key(0), (1, 3, 4, 4)), axis=-1)
    expected = 0.5 * weights.mean(axis=1) + 0.5 * np.eye(4)
    np.testing.assert_allclose(attention_rollout([weights]), expected, atol=1e-6)
    np.testing.assert_allclose(attention_rollout([weights], residual=0.0), weights.mean(axis=1), atol=1e-6)


def test_rollout_multiplies_blocks_first_block_first():
    a, b = (jax.nn.softmax(jax.random.normal(jax.random.key(s), (2, 2, 5, 5)), axis=-1) for s in (1, 2))
    mix = lambda w: 0.5 * w.mean(axis=1) + 0.5 * np.eye(5)  # noqa: E731
    rollout = attention_rollout([a, b])
    np.testing.assert_allclose(rollout, np.einsum("bij,bjk->bik", mix(b), mix(a)), atol=1e-6)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_class_token_rollout_is_a_map_over_the_patches(name):
    model, variables, images = _setup(name)
    out = forward_intermediates(model, variables, images, attention=True)
    heat = class_token_rollout(model, out.attention)
    side = model.arch.grid_size
    assert heat.shape == (2, side, side)
    assert np.all(heat >= 0) and np.all(heat.sum(axis=(1, 2)) < 1.0)
    with pytest.raises(ValueError, match=f"all {model.arch.depth} blocks' attention, got 1"):
        class_token_rollout(model, {0: out.attention[0]})


def test_rollout_refuses_a_residual_weight_outside_0_1():
    with pytest.raises(ValueError, match="residual=1.5: expected a weight between 0 and 1"):
        attention_rollout([np.ones((1, 1, 2, 2)) / 2], residual=1.5)


def test_attention_weights_come_from_the_unfused_path_when_the_model_fuses_attention():
    """On a CPU with the oneDNN kernel, inference fuses each block's attention (weights never
    formed); asking for them takes the unfused path, and they equal XLA's."""
    import importlib.metadata

    try:
        importlib.metadata.version("onednn-cpu-gomp")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the cpu-kernels extra (onednn-cpu-gomp) is not installed")
    from vitjax.kernels import onednn

    if not onednn.available():
        pytest.skip(f"the oneDNN kernel does not build here: {onednn.unavailable_reason()}")
    name = "TNT_test_patch16_32"
    _, variables, images = _setup(name)
    xla = forward_intermediates(vitjax.create_model(name), variables, images, attention=True)
    fused = vitjax.create_model(name, matmul="onednn")
    out = jax.jit(forward_intermediates, static_argnums=0, static_argnames="attention")(
        fused, variables, images, attention=True
    )
    for i in xla.attention:
        np.testing.assert_allclose(out.attention[i], xla.attention[i], rtol=0, atol=ATOL)
        np.testing.assert_allclose(out.pixel_attention[i], xla.pixel_attention[i], rtol=0, atol=ATOL)
    np.testing.assert_allclose(out.logits, xla.logits, rtol=0, atol=ATOL)


def test_sharded_like_apply_over_a_batch_split_across_devices():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    if jax.device_count() < 2:
        pytest.skip("needs several devices (tests run with 8 host devices)")
    name = "TNT_test_patch16_32"
    model, variables, _ = _setup(name)
    devices = jax.devices()
    images = nhwc(random_images(name, batch=len(devices), seed=2))
    mesh = Mesh(np.array(devices), ("data",))
    sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
    replicated = jax.device_put(variables, NamedSharding(mesh, P()))
    features = jax.jit(forward_intermediates, static_argnums=(0, 3), static_argnames="attention")
    out = features(model, replicated, sharded, (0, 1), attention=True)
    assert out.grid[1].sharding.is_equivalent_to(NamedSharding(mesh, P("data")), out.grid[1].ndim)
    local = forward_intermediates(model, variables, images, (0, 1), attention=True)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(local), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=ATOL)
