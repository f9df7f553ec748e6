"""``benchmarks.studies.train_matmuls`` times the training step's real matmul forms, and both libraries compute them."""

import numpy as np
import pytest

from benchmarks.studies.train_matmuls import _operands, jax_call, step_matmuls


def test_the_forms_are_the_blocks_matmuls_at_the_models_shapes():
    forms = {f.name: f for f in step_matmuls("DeiT_tiny_patch16_224", 8)}
    tokens = 8 * 197
    assert (forms["qkv forward x W"].m, forms["qkv forward x W"].k, forms["qkv forward x W"].n) == (tokens, 192, 576)
    weight_grad = forms["fc1 weight grad x^T g"]
    assert (weight_grad.m, weight_grad.k, weight_grad.n, weight_grad.transposed_lhs) == (192, tokens, 768, True)
    attention = forms["attention P^T dO (backward)"]
    assert (attention.batch, attention.m, attention.k, attention.n, attention.transposed_lhs) == (
        8 * 3,
        197,
        197,
        64,
        True,
    )
    # forward, input gradient and weight gradient of a dense layer do the same work
    assert forms["fc2 forward x W"].flops == forms["fc2 input grad g W^T"].flops == forms["fc2 weight grad x^T g"].flops

    tnt = {f.name: f for f in step_matmuls("TNT_small", 2)}
    inner = tnt["inner attention P V (forward)"]
    assert (inner.batch, inner.m, inner.k, inner.n) == (2 * 196 * 4, 16, 16, 6)
    assert tnt["fc1 forward x W"].m == 2 * 197


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_xla_and_pytorch_calls_compute_the_same_products(bf16):
    torch = pytest.importorskip("torch")
    from benchmarks.studies.train_matmuls import torch_call

    rng = np.random.RandomState(0)
    for form in step_matmuls("DeiT_test_patch8_32", 2):
        lhs, rhs = _operands(form, rng)
        expected = np.einsum("...km,...kn->...mn" if form.transposed_lhs else "...mk,...kn->...mn", lhs, rhs)
        ours = np.asarray(jax_call(form, lhs, rhs, bf16)())
        theirs = torch_call(form, lhs, rhs, bf16)().to(torch.float32).numpy()
        tolerance = 0.1 * np.abs(expected).max() if bf16 else 1e-4
        assert ours.shape == theirs.shape == ((form.batch,) if form.batch > 1 else ()) + (form.m, form.n), form.name
        np.testing.assert_allclose(ours, expected, atol=tolerance, err_msg=form.name)
        np.testing.assert_allclose(theirs, expected, atol=tolerance, err_msg=form.name)


def test_the_onednn_custom_call_computes_every_form():
    from vitjax.kernels import onednn

    if not onednn.available():
        pytest.skip(onednn.unavailable_reason())
    from benchmarks.studies.train_matmuls import onednn_call

    rng = np.random.RandomState(1)
    for form in step_matmuls("TNT_test_patch16_32", 2) + step_matmuls("DeiT_test_patch8_32", 2):
        lhs, rhs = _operands(form, rng)
        expected = np.einsum("...km,...kn->...mn" if form.transposed_lhs else "...mk,...kn->...mn", lhs, rhs)
        ours = np.asarray(onednn_call(form, lhs, rhs)())
        assert ours.shape == expected.shape, form.name
        np.testing.assert_allclose(ours, expected, atol=1e-4, err_msg=form.name)
