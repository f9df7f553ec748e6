"""PaddleClas weights in JAX, with no Paddle needed.

* :mod:`vitjax.weights.pdparams`: read/write ``.pdparams`` files (a restricted unpickler).
* :mod:`vitjax.weights.mapping`: the one key table between PaddleClas and Flax names.
* :mod:`vitjax.weights.convert`: ``state_dict`` <-> Flax variables, ``load_pdparams``/``save_pdparams``.

``interop`` (Paddle inference models, deployment) builds on these; nothing here
imports ``interop`` or Paddle.
"""

from vitjax.weights.convert import (
    WeightMismatchError,
    guess_model,
    load_pdparams,
    save_pdparams,
    state_dict_to_variables,
    variables_to_state_dict,
)
from vitjax.weights.pdparams import PdparamsError, read_pdparams, write_pdparams

__all__ = [
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
