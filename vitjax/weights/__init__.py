"""PaddleClas weights in JAX, with no Paddle needed.

* :mod:`vitjax.weights.errors`: ``WeightsError``, the base of ``PdparamsError`` and ``WeightMismatchError``.
* :mod:`vitjax.weights.pdparams`: read/write ``.pdparams`` files (a restricted unpickler).
* :mod:`vitjax.weights.mapping`: the one key table between PaddleClas and Flax names.
* :mod:`vitjax.weights.convert`: ``state_dict`` <-> Flax variables, ``load_pdparams``/``save_pdparams``.
* :mod:`vitjax.weights.pretrained`: PaddleClas's published weights by name, ``load_pretrained``
  (a checked, resumable download cache: :mod:`vitjax.weights.download`).

``interop`` (Paddle inference models, deployment) builds on these; nothing here
imports ``interop`` or Paddle.
"""

from vitjax.weights.convert import (
    guess_model,
    load_pdparams,
    save_pdparams,
    state_dict_to_variables,
    variables_to_state_dict,
)
from vitjax.weights.download import DownloadError
from vitjax.weights.errors import PdparamsError, WeightMismatchError, WeightsError
from vitjax.weights.pdparams import read_pdparams, write_pdparams
from vitjax.weights.pretrained import download_pretrained, list_pretrained, load_pretrained, register_pretrained

__all__ = [
    "DownloadError",
    "PdparamsError",
    "WeightMismatchError",
    "WeightsError",
    "download_pretrained",
    "guess_model",
    "list_pretrained",
    "load_pdparams",
    "load_pretrained",
    "read_pdparams",
    "register_pretrained",
    "save_pdparams",
    "state_dict_to_variables",
    "variables_to_state_dict",
    "write_pdparams",
]
