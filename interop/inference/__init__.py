"""Paddle inference models (what PaddleClas's ``tools/export_model.py`` writes), both ways.

One module per job; read the one you need:

* :mod:`~interop.inference.files`: where a directory keeps its files (``inference.json`` or
  ``inference.pdmodel``, ``inference.pdiparams``, ``inference.pdiparams.info``) and the formats.
  Errors are :class:`~interop.errors.InferenceModelError` (an :class:`~interop.errors.InteropError`).
* :mod:`~interop.inference.pdiparams`: the ``.pdiparams`` framing and the ``.info`` names,
  read without Paddle and without trust.
* :mod:`~interop.inference.export`: Flax variables -> an inference model directory
  (:func:`export_inference_model`; PIR, or legacy with the old-IR shims).
* :mod:`~interop.inference.program`: a directory read through Paddle's static executor.
* :mod:`~interop.inference.keys`: Paddle's internal parameter names -> PaddleClas's keys
  (from ``.info``, or by layer creation order and shape).
* :mod:`~interop.inference.importing`: a directory -> the registered model and Flax variables,
  verified against the file's own program (:func:`read_inference_model`,
  :func:`load_inference_model`).
* :mod:`~interop.inference.to_onnx`: a PIR directory -> ONNX (:func:`export_onnx`).

Importing this package imports neither Paddle nor our model code: each name loads its module on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitjax._lazy import lazy_exports

# Public name -> the module that defines it.
_PUBLIC = {
    "IMPORT_ATOL": "interop.inference.importing",
    "INFO_FILE": "interop.inference.files",
    "INPUT_NAME": "interop.inference.files",
    "MODEL_PREFIX": "interop.inference.files",
    "PARAMS_FILE": "interop.inference.files",
    "PROGRAM_FILES": "interop.inference.files",
    "Format": "interop.inference.files",
    "ImportedModel": "interop.inference.importing",
    "InferenceModelError": "interop.errors",
    "InferenceModelFiles": "interop.inference.files",
    "LayerOrderMismatch": "interop.errors",
    "LoadedProgram": "interop.inference.program",
    "export_inference_model": "interop.inference.export",
    "export_onnx": "interop.inference.to_onnx",
    "load_inference_model": "interop.inference.importing",
    "locate_inference_model": "interop.inference.files",
    "read_inference_model": "interop.inference.importing",
    "read_structured_names": "interop.inference.pdiparams",
    "resolve_variables": "interop.inference.export",
    "scan_params_file": "interop.inference.pdiparams",
    "structured_state_by_order": "interop.inference.keys",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)


if TYPE_CHECKING:
    from interop.errors import InferenceModelError, LayerOrderMismatch
    from interop.inference.export import export_inference_model, resolve_variables
    from interop.inference.files import (
        INFO_FILE,
        INPUT_NAME,
        MODEL_PREFIX,
        PARAMS_FILE,
        PROGRAM_FILES,
        Format,
        InferenceModelFiles,
        locate_inference_model,
    )
    from interop.inference.importing import IMPORT_ATOL, ImportedModel, load_inference_model, read_inference_model
    from interop.inference.keys import structured_state_by_order
    from interop.inference.pdiparams import read_structured_names, scan_params_file
    from interop.inference.program import LoadedProgram
    from interop.inference.to_onnx import export_onnx
