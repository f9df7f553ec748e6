"""Interop with PaddleClas: Paddle inference models, ONNX, deployment and serving.

Importing this package imports neither Paddle nor our model code: each name loads its module on
first use, and the functions that need Paddle import it when called. Interop's own errors derive
from :class:`InteropError` (:mod:`interop.errors`); those of the weights layer beneath from
:class:`vitjax.WeightsError`.

``.pdparams`` weights need no Paddle and have one public door, the ``vitjax`` namespace
(``vitjax.load_pdparams``, ``vitjax.save_pdparams``, ...). Their old names here still work and say so.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from vitjax._lazy import lazy_exports

# Public name -> the module that defines it.
_PUBLIC = {
    "InferenceModelError": "interop.errors",
    "InteropError": "interop.errors",
    "ImportedModel": "interop.inference",
    "export_inference_model": "interop.inference",
    "export_onnx": "interop.inference",
    "load_inference_model": "interop.inference",
    "read_inference_model": "interop.inference",
}

# The weights API that moved to `vitjax` (this package re-exported it before).
_MOVED_TO_VITJAX = (
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
)

__all__ = sorted(_PUBLIC)


def _moved_to_vitjax(name: str) -> Any:
    if name not in _MOVED_TO_VITJAX:
        raise AttributeError(f"module 'interop' has no attribute {name!r}")
    warnings.warn(f"interop.{name} is vitjax.{name} (no Paddle needed); use that", DeprecationWarning, stacklevel=3)
    import vitjax

    return getattr(vitjax, name)


__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC, fallback=_moved_to_vitjax)


if TYPE_CHECKING:
    from interop.errors import InferenceModelError, InteropError
    from interop.inference import (
        ImportedModel,
        export_inference_model,
        export_onnx,
        load_inference_model,
        read_inference_model,
    )
