"""The one way interop imports Paddle.

paddlepaddle 3.3.1 crashes the interpreter (segmentation fault) when it is imported
after TensorFlow in the same process (measured here; TensorFlow comes in through
tensorflow-datasets and clu's TensorBoard writer). Importing Paddle first is fine, so
instead of a crash we stop with an error that says what to do.
"""

from __future__ import annotations

import sys
import types


class PaddleImportOrderError(RuntimeError):
    pass


def require_paddle() -> types.ModuleType:
    if "paddle" not in sys.modules and "tensorflow" in sys.modules:
        raise PaddleImportOrderError(
            "Paddle must be imported before TensorFlow in one process (paddlepaddle 3.3.1 crashes "
            "otherwise): `import paddle` before tensorflow / tensorflow_datasets / clu, or run "
            "the interop step in its own process (python -m interop ...)"
        )
    import paddle

    return paddle
