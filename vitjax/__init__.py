"""vitjax: PaddleClas's DeiT and TNT vision transformers in JAX/Flax.

The public API is this package's namespace (``vitjax.create_model``, ``vitjax.load_pdparams``, ...).
Names are imported on first use, so ``import vitjax`` is cheap and loads neither JAX nor Flax;
the training program lives in :mod:`vitjax.training` and runs as ``python -m vitjax.main``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitjax._lazy import lazy_exports
from vitjax._moved import MOVED_MODULES, install_moved_module_finder, moved_module

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    # models
    "EvalTransform": "vitjax.eval_transform",
    "Intermediates": "vitjax.models",
    "ModelSpec": "vitjax.models",
    "attention_rollout": "vitjax.models",
    "class_token_rollout": "vitjax.models",
    "create_model": "vitjax.models",
    "forward_intermediates": "vitjax.models",
    "get_spec": "vitjax.models",
    "list_models": "vitjax.models",
    "resize_position_embeddings": "vitjax.models.posemb",
    # weights: .pdparams files and PaddleClas's published weights, with no Paddle needed
    "load_pdparams": "vitjax.weights.convert",
    "save_pdparams": "vitjax.weights.convert",
    "guess_model": "vitjax.weights.convert",
    "state_dict_to_variables": "vitjax.weights.convert",
    "variables_to_state_dict": "vitjax.weights.convert",
    "read_pdparams": "vitjax.weights.pdparams",
    "write_pdparams": "vitjax.weights.pdparams",
    "load_pretrained": "vitjax.weights.pretrained",
    "download_pretrained": "vitjax.weights.pretrained",
    "list_pretrained": "vitjax.weights.pretrained",
    "register_pretrained": "vitjax.weights.pretrained",
    "WeightsError": "vitjax.weights.errors",
    "PdparamsError": "vitjax.weights.errors",
    "WeightMismatchError": "vitjax.weights.errors",
    "DownloadError": "vitjax.weights.download",
    # host memory
    "keep_freed_memory": "vitjax.hostmem",
}

__all__ = sorted(_PUBLIC)

install_moved_module_finder()


def _moved_module(name: str) -> Any:
    if name not in MOVED_MODULES:  # `from vitjax import train` written before the training/ subpackage
        raise AttributeError(f"module 'vitjax' has no attribute {name!r}")
    module = moved_module(name)
    globals()[name] = module  # warned once
    return module


__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC, fallback=_moved_module)


if TYPE_CHECKING:  # for type checkers and the API reference; at run time names load on first use
    from vitjax.eval_transform import EvalTransform
    from vitjax.hostmem import keep_freed_memory
    from vitjax.models import (
        Intermediates,
        ModelSpec,
        attention_rollout,
        class_token_rollout,
        create_model,
        forward_intermediates,
        get_spec,
        list_models,
    )
    from vitjax.models.posemb import resize_position_embeddings
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
