"""Our Flax logits equal PaddleClas's, on the same random weights and inputs.

Two independent references: our Paddle mirror (interop/paddle_models.py) and
PaddleClas 2.6.0's own model code. fp32 bar: max abs logit difference <= 1e-4 (the
models' logits are O(1); the observed differences are ~1e-6, float32 summation order).
"""

import jax
import numpy as np
import paddle
import paddleclas_reference
import pytest
from testutil import model_params, nhwc, random_images

import vitjax
from interop.paddle_models import build_paddle_model, load_numpy_state, state_dict_numpy

ATOL = 1e-4


def flax_logits(model_name: str, variables, images_nchw: np.ndarray, **create_kwargs) -> np.ndarray:
    model = vitjax.create_model(model_name, **create_kwargs)
    return np.asarray(jax.jit(model.apply)(variables, nhwc(images_nchw)))


def paddle_logits(layer, images_nchw: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return layer(paddle.to_tensor(images_nchw)).numpy()


@pytest.mark.parametrize("name", model_params(vitjax.list_models(include_test=True)))
def test_flax_matches_paddle_mirror(name):
    layer = build_paddle_model(name)
    state = state_dict_numpy(layer)
    images = random_images(name, batch=2)
    ours = flax_logits(name, vitjax.state_dict_to_variables(state, name), images)
    ref = paddle_logits(layer, images)
    assert ours.shape == ref.shape == (2, 1000)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


def _paddleclas_model(name: str, num_classes: int = 1000):
    spec = vitjax.get_spec(name)
    if spec.test_size:
        return paddleclas_reference.build_from_arch(spec, num_classes)
    return paddleclas_reference.build(name, class_num=num_classes)


@pytest.mark.parametrize(
    "name",
    model_params(vitjax.list_models(include_test=True), slow_unless=("TNT_small", "DeiT_tiny_distilled_patch16_224")),
)
def test_pdparams_saved_by_paddleclas_load_with_identical_logits(name, tmp_path):
    model = _paddleclas_model(name)
    path = tmp_path / f"{name}_pretrained.pdparams"
    paddle.save(model.state_dict(), str(path))  # exactly what PaddleClas ships
    images = random_images(name, batch=3, seed=1)
    ours = flax_logits(name, vitjax.load_pdparams(path, name), images)
    np.testing.assert_allclose(ours, paddle_logits(model, images), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "name", model_params(vitjax.list_models(include_test=True), slow_unless=("TNT_small", "DeiT_tiny_patch16_224"))
)
def test_pdparams_we_save_load_strictly_into_paddleclas(name, tmp_path):
    model = vitjax.create_model(name, num_classes=10)
    size = vitjax.get_spec(name).img_size
    variables = jax.jit(model.init)(jax.random.key(3), np.zeros((1, size, size, 3), np.float32))
    path = tmp_path / "ours.pdparams"
    vitjax.save_pdparams(variables, name, path)

    reference = _paddleclas_model(name, num_classes=10)
    missing, unexpected = reference.set_state_dict(paddle.load(str(path)))
    assert (missing, unexpected) == ([], [])
    assert list(paddle.load(str(path))) == list(reference.state_dict())
    images = random_images(name, batch=2, seed=2)
    np.testing.assert_allclose(
        flax_logits(name, variables, images, num_classes=10), paddle_logits(reference, images), rtol=0, atol=ATOL
    )


@pytest.mark.parametrize("name", ["DeiT_test_distilled_patch8_32", "TNT_test_patch16_32"])
def test_weights_load_at_a_new_resolution(name, tmp_path):
    """img_size=48 from 32-pixel weights: same embeddings for the prefix tokens, resized grid,
    and the Flax model at 48 equals the Paddle mirror at 48 given the resized weights."""
    layer = build_paddle_model(name)
    path = tmp_path / "w.pdparams"
    paddle.save(layer.state_dict(), str(path))
    variables = vitjax.load_pdparams(path, name, img_size=48)
    pos_key = "pos_embed" if "DeiT" in name else "patch_pos"
    arch = vitjax.get_spec(name).arch
    prefix = arch.num_prefix_tokens
    resized = np.asarray(variables["params"][pos_key])
    assert resized.shape[1] == prefix + (48 // arch.patch_size) ** 2
    np.testing.assert_array_equal(resized[:, :prefix], layer.state_dict()[pos_key].numpy()[:, :prefix])

    big = load_numpy_state(build_paddle_model(name, img_size=48), vitjax.variables_to_state_dict(variables, name))
    images = random_images(name, batch=2, img_size=48)
    np.testing.assert_allclose(flax_logits(name, variables, images, img_size=48), paddle_logits(big, images), atol=ATOL)


@pytest.mark.slow
def test_deit_base_224_weights_run_at_384():
    layer = build_paddle_model("DeiT_base_patch16_224")
    variables = vitjax.state_dict_to_variables(state_dict_numpy(layer), "DeiT_base_patch16_224", img_size=384)
    assert variables["params"]["pos_embed"].shape == (1, 1 + 24 * 24, 768)
    logits = flax_logits(
        "DeiT_base_patch16_224", variables, random_images("DeiT_base_patch16_224", 1, img_size=384), img_size=384
    )
    assert np.isfinite(logits).all()
