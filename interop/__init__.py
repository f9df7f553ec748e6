"""Interop with PaddleClas: ``.pdparams`` weights, Paddle inference models, deployment.

Importing this package does not import Paddle; the functions that need it import it
when called.
"""

from interop.inference import (
    ImportedModel,
    InferenceModelError,
    export_inference_model,
    export_onnx,
    load_inference_model,
    read_inference_model,
)
from vitjax.weights.pdparams import PdparamsError, read_pdparams, write_pdparams
from vitjax.weights.convert import (
    WeightMismatchError,
    guess_model,
    load_pdparams,
    save_pdparams,
    state_dict_to_variables,
    variables_to_state_dict,
)

__all__ = [
    "ImportedModel",
    "InferenceModelError",
    "export_inference_model",
    "export_onnx",
    "load_inference_model",
    "read_inference_model",
    "PdparamsError",
    "WeightMismatchError",
    "guess_model",
    "load_pdparams",
    "read_pdparams",
    "save_pdparams",
    "state_dict_to_variables",
    "variables_to_state_dict",
    "write_pdparams",
]
