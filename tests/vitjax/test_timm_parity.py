"""timm (PyTorch), a third implementation, computes our logits on our weights.

``benchmarks.timm_peer`` converts our variables to timm's ``state_dict``; timm's
``deit_*``/``tnt_s_patch16_224`` must then give our logits (fp32, max |diff| <= 1e-4), plain and
distilled. timm comes from the optional ``bench`` extra.
"""

import jax
import numpy as np
import pytest

pytest.importorskip("timm")
import torch  # noqa: E402
from testutil import model_params, nhwc, random_images  # noqa: E402

import vitjax  # noqa: E402
from benchmarks.timm_peer import TIMM_NAMES, create_timm_model, variables_to_timm_state  # noqa: E402

ATOL = 1e-4
PARITY_MODELS = ("DeiT_tiny_patch16_224", "DeiT_tiny_distilled_patch16_224", "TNT_small")


def _random_variables(name: str, seed: int = 0):
    size = vitjax.get_spec(name).img_size
    return jax.jit(vitjax.create_model(name).init)(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32))


def _ours(name, variables, images, train=False):
    return vitjax.create_model(name).apply(variables, nhwc(images), train=train)


@pytest.mark.parametrize("name", model_params(PARITY_MODELS, slow_unless=PARITY_MODELS))
def test_timm_logits_equal_ours_on_our_weights(name):
    variables = _random_variables(name)
    images = random_images(name, batch=2, seed=3)
    model = create_timm_model(name, variables)
    with torch.no_grad():
        theirs = model(torch.from_numpy(images)).numpy()
    ours = np.asarray(_ours(name, variables, images))
    assert theirs.shape == ours.shape == (2, 1000)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=ATOL)


def test_distilled_timm_returns_both_heads_like_ours_in_training():
    name = "DeiT_tiny_distilled_patch16_224"
    variables = _random_variables(name, seed=1)
    images = random_images(name, batch=2, seed=4)
    model = create_timm_model(name, variables)
    model.set_distilled_training(True)
    model.train()  # no dropout or drop path in either model
    with torch.no_grad():
        cls_logits, dist_logits = (t.numpy() for t in model(torch.from_numpy(images)))
    ours_cls, ours_dist = _ours(name, variables, images, train=True)
    np.testing.assert_allclose(cls_logits, np.asarray(ours_cls), rtol=0, atol=ATOL)
    np.testing.assert_allclose(dist_logits, np.asarray(ours_dist), rtol=0, atol=ATOL)
    assert np.abs(cls_logits - dist_logits).max() > 1e-3  # the two heads really differ


def test_every_mapped_model_converts_to_timm_keys_and_shapes():
    import timm

    for name, timm_name in TIMM_NAMES.items():
        size = vitjax.get_spec(name).img_size
        shapes = jax.eval_shape(
            vitjax.create_model(name).init, jax.random.key(0), np.zeros((1, size, size, 3), np.float32)
        )
        variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
        state = variables_to_timm_state(variables, name)
        with torch.device("meta"):
            expected = timm.create_model(timm_name, pretrained=False).state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in expected.items()}, name


def test_model_without_timm_counterpart_is_refused_by_name():
    variables = _random_variables("DeiT_test_patch8_32")
    with pytest.raises(ValueError, match="DeiT_test_patch8_32.*no timm counterpart"):
        create_timm_model("DeiT_test_patch8_32", variables)
