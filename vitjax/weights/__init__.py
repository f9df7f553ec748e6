"""PaddleClas weights in JAX, with no Paddle needed.

* :mod:`vitjax.weights.errors`: ``WeightsError``, the base of ``PdparamsError`` and ``WeightMismatchError``.
* :mod:`vitjax.weights.pdparams`: read/write ``.pdparams`` files (a restricted unpickler).
* :mod:`vitjax.weights.mapping`: the one key table between PaddleClas and Flax names.
* :mod:`vitjax.weights.convert`: ``state_dict`` <-> Flax variables, ``load_pdparams``/``save_pdparams``.
* :mod:`vitjax.weights.pretrained`: PaddleClas's published weights by name, ``load_pretrained``
  (a checked, resumable download cache: :mod:`vitjax.weights.download`).

The public door to these is the ``vitjax`` namespace (``vitjax.load_pdparams``,
``vitjax.load_pretrained``, ``vitjax.WeightsError``, ...); this package holds the modules.
``interop`` (Paddle inference models, deployment) builds on them; nothing here imports
``interop`` or Paddle.
"""

import warnings as _warnings
from typing import Any as _Any

from vitjax._lazy import lazy_exports as _lazy_exports

# Names this package re-exported before the `vitjax` namespace became their one door.
_MOVED_TO_VITJAX = (
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
)


def _moved_to_vitjax(name: str) -> _Any:
    if name in _MOVED_TO_VITJAX:
        _warnings.warn(f"vitjax.weights.{name} is vitjax.{name}; use that", DeprecationWarning, stacklevel=3)
        import vitjax

        value = globals()[name] = getattr(vitjax, name)  # warned once
        return value
    raise AttributeError(f"module 'vitjax.weights' has no attribute {name!r}")


__getattr__, __dir__ = _lazy_exports(globals(), {}, fallback=_moved_to_vitjax)  # submodules as attributes, too
