"""Interop with PaddleClas: ``.pdparams`` weights, Paddle inference models, deployment.

Importing this package does not import Paddle; the functions that need it import it
when called. Interop's own errors derive from :class:`InteropError` (:mod:`interop.errors`);
those of the weights layer beneath from :class:`WeightsError` (:mod:`vitjax.weights.errors`).
"""

from interop.errors import InferenceModelError, InteropError
from interop.inference import (
    ImportedModel,
    export_inference_model,
    export_onnx,
    load_inference_model,
    read_inference_model,
)
from vitjax.weights.convert import (
    guess_model,
    load_pdparams,
    save_pdparams,
    state_dict_to_variables,
    variables_to_state_dict,
)
from vitjax.weights.errors import PdparamsError, WeightMismatchError, WeightsError
from vitjax.weights.pdparams import read_pdparams, write_pdparams

__all__ = [
    "ImportedModel",
    "InferenceModelError",
    "InteropError",
    "export_inference_model",
    "export_onnx",
    "load_inference_model",
    "read_inference_model",
    "PdparamsError",
    "WeightMismatchError",
    "WeightsError",
    "guess_model",
    "load_pdparams",
    "read_pdparams",
    "save_pdparams",
    "state_dict_to_variables",
    "variables_to_state_dict",
    "write_pdparams",
]
