"""interop.errors: one base class for interop's errors, the weights layer's own base, one-line quotes."""

import numpy as np
import pytest

import vitjax
from interop._paddle import PaddleImportOrderError
from interop.deploy import BackendUnavailable, InputShapeError
from interop.errors import InteropError, LayerOrderMismatch, first_line
from interop.inference import InferenceModelError, structured_state_by_order


@pytest.mark.parametrize(
    "error", [InferenceModelError, LayerOrderMismatch, BackendUnavailable, InputShapeError, PaddleImportOrderError]
)
def test_every_interop_error_is_an_interop_error(error):
    assert issubclass(error, InteropError)


def test_errors_keep_the_builtin_bases_callers_catch():
    assert issubclass(InferenceModelError, ValueError) and issubclass(InputShapeError, ValueError)
    assert issubclass(BackendUnavailable, RuntimeError) and issubclass(PaddleImportOrderError, RuntimeError)
    assert issubclass(vitjax.PdparamsError, vitjax.WeightsError)
    assert issubclass(vitjax.WeightMismatchError, vitjax.WeightsError)
    assert issubclass(vitjax.WeightsError, ValueError)


def test_an_inference_model_error_is_not_a_pdparams_error():
    assert not issubclass(InferenceModelError, vitjax.PdparamsError)
    assert not issubclass(vitjax.WeightMismatchError, vitjax.PdparamsError)


def test_first_line_quotes_a_native_message_without_its_trace():
    assert first_line(RuntimeError("\n  (NotFound) no file  \n\nC++ Traceback:\n  0 f()")) == "(NotFound) no file"
    assert first_line(OSError()) == "OSError"
    assert first_line(ValueError("   \n ")) == "ValueError"


def test_parameters_that_do_not_fit_by_creation_order_raise_a_typed_error():
    parameters = {"linear_0.w_0": np.zeros((8, 4), np.float32), "linear_0.b_0": np.zeros(4, np.float32)}
    with pytest.raises(LayerOrderMismatch, match=r"layer types \['linear'\] != "):
        structured_state_by_order(parameters, "DeiT_test_patch8_32", 32)
