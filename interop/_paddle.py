"""The one way interop imports Paddle.

paddlepaddle 3.3.1 (and paddle2onnx 2.1) crash the interpreter (segmentation fault) when
imported after TensorFlow in the same process (measured here; TensorFlow comes in through
tensorflow-datasets and clu's TensorBoard writer). Importing Paddle first is fine, so
instead of a crash we stop with an error that says what to do.
"""

from __future__ import annotations

import importlib
import sys
import types

from interop.errors import PaddleImportOrderError


def _require(name: str) -> types.ModuleType:
    if name not in sys.modules and "tensorflow" in sys.modules:
        raise PaddleImportOrderError(
            f"{name} must be imported before TensorFlow in one process (it crashes otherwise): "
            f"`import {name}` before tensorflow / tensorflow_datasets / clu, or run the interop "
            "step in its own process (python -m interop ...)"
        )
    return importlib.import_module(name)


def require_paddle() -> types.ModuleType:
    return _require("paddle")


def require_paddle2onnx() -> types.ModuleType:
    """Paddle2ONNX 2.1 likewise segfaults in ``export`` when imported after TensorFlow."""
    return _require("paddle2onnx")
