"""Reading and writing PaddleClas ``.pdparams`` files without Paddle and without trust.

A ``.pdparams`` file is a pickle of ``{structured_name: numpy.ndarray}`` (protocol 2-4),
optionally with a ``"StructuredToParameterName@@"`` entry mapping structured names to
Paddle's internal parameter names. Unpickling runs whatever callables a file names,
so we never use ``pickle.load`` on it: :class:`_ArraysOnlyUnpickler` resolves only the
handful of globals Paddle itself writes (numpy's array reconstruction and dtypes, and
``OrderedDict``) and refuses everything else before it can run.

Writes go to a temporary file in the target directory that is renamed into place
only once complete, so a crash never leaves a half-written ``.pdparams``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path
from typing import Mapping

import numpy as np

from vitjax.files import atomic_file
from vitjax.weights.errors import PdparamsError

STRUCTURED_NAMES_KEY = "StructuredToParameterName@@"

# (module, name) pairs that Paddle's own writers (paddle.save / fluid.save_dygraph,
# numpy 1.x and 2.x) put in a .pdparams pickle. Nothing else is resolved.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): None,  # resolved by _reconstruct()
    ("numpy._core.multiarray", "_reconstruct"): None,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def _reconstruct():
    from numpy._core import multiarray  # numpy >= 2

    return multiarray._reconstruct


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a .pdparams file never contains")
        if name == "_reconstruct":
            return _reconstruct()
        return _ALLOWED_GLOBALS[(module, name)]

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it uses persistent ids, which a .pdparams file never contains")


def read_pdparams(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Returns the arrays of a ``.pdparams`` file, in file order.

    Raises :class:`PdparamsError` (one line, naming the file) for a missing, empty,
    truncated, non-pickle or malicious file, or one that holds anything but arrays.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PdparamsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PdparamsError(f"{path}: is a directory, not a .pdparams file") from None
    except OSError as e:
        raise PdparamsError(f"{path}: cannot read: {e.strerror}") from None
    if not data:
        raise PdparamsError(f"{path}: file is empty")
    if data[:1] != b"\x80":
        raise PdparamsError(f"{path}: not a .pdparams file (no pickle header)")
    try:
        obj = _ArraysOnlyUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        message = str(e)
        if "never contains" in message:
            raise PdparamsError(f"{path}: refused to load: {message}") from None
        raise PdparamsError(f"{path}: corrupt or truncated .pdparams file ({message})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError, OverflowError) as e:
        raise PdparamsError(f"{path}: corrupt or truncated .pdparams file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise PdparamsError(f"{path}: expected a dict of arrays, found {type(obj).__name__}")
    arrays = {}
    for key, value in obj.items():
        if key == STRUCTURED_NAMES_KEY:
            continue
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise PdparamsError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")
        arrays[key] = value
    if not arrays:
        raise PdparamsError(f"{path}: holds no parameters")
    return arrays


def write_pdparams(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Writes ``state`` as ``paddle.save(layer.state_dict())`` would, atomically."""
    path = Path(path)
    payload = {key: np.ascontiguousarray(value) for key, value in state.items()}
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise PdparamsError(f"{path}: directory {directory} does not exist")
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    return path
