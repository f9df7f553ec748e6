"""Reading and writing PaddleClas ``.pdparams`` files without Paddle and without trust.

A ``.pdparams`` file is a pickle of ``{structured_name: numpy.ndarray}`` (protocol 2-4),
optionally with a ``"StructuredToParameterName@@"`` entry mapping structured names to
Paddle's internal parameter names. Unpickling runs whatever callables a file names,
so we never use ``pickle.load`` on it: :func:`vitjax.weights.safe_pickle.safe_loads` interprets
the opcodes itself and can build only what Paddle writes (dicts of C-ordered, owning, real
numeric arrays), in one linear pass and memory bounded by a small multiple of the file's
size. Weights that are NaN or infinite are refused too, naming the key, unless asked for.

Writes go to a temporary file in the target directory that is renamed into place
only once complete, so a crash never leaves a half-written ``.pdparams``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vitjax.files import atomic_file
from vitjax.weights.errors import PdparamsError
from vitjax.weights.safe_pickle import SafePickleError, safe_loads

STRUCTURED_NAMES_KEY = "StructuredToParameterName@@"


def read_pdparams(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """Returns the arrays of a ``.pdparams`` file, in file order.

    Raises :class:`PdparamsError` (one line, naming the file) for a missing, empty,
    truncated, non-pickle or malicious file, one that holds anything but arrays of real
    numbers, or (unless ``allow_nonfinite``) an array with a NaN or infinite value.
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
        obj = safe_loads(data)
    except SafePickleError as e:
        message = str(e)
        if "never contains" in message or "only bool, integer" in message:
            raise PdparamsError(f"{path}: refused to load: {message}") from None
        raise PdparamsError(f"{path}: corrupt or truncated .pdparams file ({message})") from None
    except MemoryError:
        raise PdparamsError(f"{path}: its arrays do not fit in memory") from None
    if not isinstance(obj, dict):
        raise PdparamsError(f"{path}: expected a dict of arrays, found {type(obj).__name__}")
    arrays = {}
    for key, value in obj.items():
        if key == STRUCTURED_NAMES_KEY:
            continue
        if not isinstance(key, str):
            raise PdparamsError(f"{path}: a key is a {type(key).__name__}, not a parameter name")
        if not isinstance(value, np.ndarray):
            raise PdparamsError(f"{path}: entry {key[:100]!r} is a {type(value).__name__}, not an array")
        if not allow_nonfinite and value.dtype.kind == "f" and not np.isfinite(value).all():
            raise PdparamsError(
                f"{path}: entry {key[:100]!r} holds NaN or infinite values "
                "(pass allow_nonfinite=True to load it anyway)"
            )
        arrays[key] = value
    if not arrays:
        raise PdparamsError(f"{path}: holds no parameters")
    return arrays


def write_pdparams(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Writes ``state`` as ``paddle.save(layer.state_dict())`` would, atomically."""
    path = Path(path)
    payload = {key: np.asarray(value, order="C") for key, value in state.items()}  # 0-d stays 0-d
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise PdparamsError(f"{path}: directory {directory} does not exist")
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    return path
