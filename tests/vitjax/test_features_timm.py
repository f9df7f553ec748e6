"""timm, on the same weights, computes the features and the attention we return.

Our variables go to timm through ``benchmarks.timm_peer`` (timm's classes built with each
model's hyper-parameters, the test-size variants included). Every tensor
``vitjax.forward_intermediates`` returns must equal timm's ``forward_intermediates`` (DeiT and
TNT's outer tokens), its blocks' outputs (TNT's inner tokens, taken by a forward hook) and
``timm.utils.AttentionExtract`` (attention weights), within fp32 tolerance.
"""

import functools

import jax
import numpy as np
import pytest

pytest.importorskip("timm")
import torch  # noqa: E402
from testutil import model_params, nhwc, random_images  # noqa: E402
from timm.utils import AttentionExtract  # noqa: E402

import vitjax  # noqa: E402
from benchmarks.timm_peer import create_timm_model_like  # noqa: E402
from vitjax.models.features import forward_intermediates  # noqa: E402

TEST_MODELS = ("DeiT_test_patch8_32", "DeiT_test_distilled_patch8_32", "TNT_test_patch16_32")
FULL_SIZE = ("DeiT_tiny_patch16_224", "DeiT_tiny_distilled_patch16_224", "TNT_small")
ATOL = 1e-4  # as the logits parity test; the test-size models agree to ~1e-6


@functools.cache
def _setup(name, batch):
    model = vitjax.create_model(name)
    images = random_images(name, batch=batch, seed=5)
    variables = jax.jit(model.init)(jax.random.key(2), nhwc(images))
    theirs = create_timm_model_like(name, variables)
    for module in theirs.modules():  # DeiT's attention unfused, so that AttentionExtract sees its softmax
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model, variables, images, theirs


def _close(ours, theirs, what):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert np.shape(ours) == np.shape(theirs), what
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=ATOL, err_msg=what)


def _check_features(name, batch, indices, stop_early):
    model, variables, images, theirs = _setup(name, batch)
    ours = forward_intermediates(model, variables, nhwc(images), indices, stop_early=stop_early)
    pixels = {}
    hooks = [
        block.register_forward_hook(functools.partial(lambda i, _m, _a, out: pixels.__setitem__(i, out[0]), i))
        for i, block in enumerate(theirs.blocks)
        if name.startswith("TNT")
    ]
    with torch.no_grad():
        final, taken = theirs.forward_intermediates(
            torch.from_numpy(images), indices, return_prefix_tokens=True, stop_early=stop_early, output_fmt="NCHW"
        )
        pre_logits = theirs.forward_head(final, pre_logits=True)
        logits = theirs.forward_head(final)
    for hook in hooks:
        hook.remove()
    assert len(taken) == len(ours.grid)
    for (i, grid), (spatial, prefix) in zip(ours.grid.items(), taken, strict=True):
        _close(grid, spatial.permute(0, 2, 3, 1), f"{name} block {i} grid (NHWC)")
        _close(ours.prefix[i], prefix, f"{name} block {i} prefix tokens")
        _close(ours.tokens[i], torch.cat([prefix, spatial.flatten(2).transpose(1, 2)], 1), f"{name} block {i}")
        if name.startswith("TNT"):
            inner = pixels[i].reshape(batch, -1, *pixels[i].shape[1:])
            _close(ours.pixels[i], inner, f"{name} block {i} inner tokens")
    if ours.features is not None:
        _close(ours.features, final, f"{name} final normed tokens")
        _close(ours.pre_logits, pre_logits, f"{name} pre_logits")
        _close(ours.logits, logits, f"{name} logits")
    else:
        assert stop_early and max(ours.tokens) < model.arch.depth - 1


def _check_attention(name, batch):
    model, variables, images, theirs = _setup(name, batch)
    ours = forward_intermediates(model, variables, nhwc(images), attention=True)
    with torch.no_grad():
        extracted = AttentionExtract(theirs, names=["*attn*.softmax"])(torch.from_numpy(images))
    expected = {}
    for node, weights in extracted.items():  # e.g. blocks.3.attn.softmax, blocks.3.attn_in.softmax
        _, index, which, _ = node.split(".")
        expected[(int(index), which)] = weights
    depth = model.arch.depth
    assert len(expected) == depth * (2 if name.startswith("TNT") else 1)
    for i in range(depth):
        if name.startswith("TNT"):
            _close(ours.attention[i], expected[(i, "attn_out")], f"{name} block {i} outer attention")
            inner = expected[(i, "attn_in")]
            _close(ours.pixel_attention[i], inner.reshape(batch, -1, *inner.shape[1:]), f"{name} block {i} inner")
        else:
            _close(ours.attention[i], expected[(i, "attn")], f"{name} block {i} attention")


@pytest.mark.parametrize("name", TEST_MODELS)
@pytest.mark.parametrize("indices, stop_early", [(None, False), (1, False), ([0], True), ([-2], False)])
def test_features_equal_timm_forward_intermediates(name, indices, stop_early):
    _check_features(name, 2, indices, stop_early)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_attention_equals_timm_attention_extract(name):
    _check_attention(name, 2)


@pytest.mark.parametrize("name", model_params(FULL_SIZE, slow_unless=()))
def test_full_size_features_and_attention_equal_timm(name):
    _check_features(name, 1, [0, 5, -1], False)
    _check_features(name, 1, 2, True)
    _check_attention(name, 1)
