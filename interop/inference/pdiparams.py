"""Reading ``.pdiparams`` framing and ``.pdiparams.info`` names without Paddle.

Neither function loads parameters into Paddle: :func:`scan_params_file` walks the
binary framing to catch a truncated file before Paddle does (Paddle aborts with a C++
trace or reads garbage), and :func:`read_structured_names` reads the ``.info`` pickle
with an unpickler that resolves no globals at all.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from interop.errors import InferenceModelError

# Paddle's VarType enum -> numpy dtype, for the types a parameters file can hold.
_PADDLE_DTYPES = {0: np.bool_, 1: np.int16, 2: np.int32, 3: np.int64, 4: np.float16, 5: np.float32, 6: np.float64,
                  20: np.uint8, 21: np.int8, 22: np.uint16, 23: np.complex64, 24: np.complex128}


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A protobuf base-128 varint at ``pos``: ``(value, position after it)``."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _tensor_desc(desc: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    """Decodes Paddle's ``TensorDesc`` message (field 1: data type, field 2: dims)."""
    pos, dtype, dims = 0, None, []
    while pos < len(desc):
        tag, pos = _read_varint(desc, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(desc, pos)
            if field == 1:
                dtype = value
            elif field == 2:
                dims.append(value - (1 << 64) if value >= 1 << 63 else value)
        elif wire == 2:
            length, pos = _read_varint(desc, pos)
            if field == 2:  # packed dims
                end = pos + length
                while pos < end:
                    value, pos = _read_varint(desc, pos)
                    dims.append(value)
            pos += length if field != 2 else 0
        else:
            raise ValueError(f"unexpected wire type {wire} in a tensor description")
    if dtype not in _PADDLE_DTYPES:
        raise ValueError(f"unknown tensor data type {dtype}")
    return np.dtype(_PADDLE_DTYPES[dtype]), tuple(dims)


def scan_params_file(path: str | os.PathLike) -> list[tuple[np.dtype, tuple[int, ...]]]:
    """The (dtype, shape) of every tensor in a combined ``.pdiparams`` file, checking its length.

    Paddle aborts with a C++ trace (or reads garbage) on a truncated file; walking
    the file's framing first turns that into a one-line error naming the file.
    Each record is: u32 version, u64 LoD levels (each u64 size + data), u32 tensor
    version, i32 description size, the ``TensorDesc`` message, then the raw data.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise InferenceModelError(f"{path}: file is empty")
    tensors, pos = [], 0
    try:
        while pos < len(data):
            index = len(tensors)
            (_version,) = struct.unpack_from("<I", data, pos)
            (lod_levels,) = struct.unpack_from("<Q", data, pos + 4)
            pos += 12
            for _ in range(lod_levels):
                (size,) = struct.unpack_from("<Q", data, pos)
                pos += 8 + size
            _tensor_version, desc_size = struct.unpack_from("<Ii", data, pos)
            pos += 8
            if desc_size < 0 or pos + desc_size > len(data):
                raise ValueError(f"tensor #{index}: description runs past the end")
            dtype, shape = _tensor_desc(data[pos : pos + desc_size])
            pos += desc_size
            nbytes = dtype.itemsize * math.prod(shape)
            if pos + nbytes > len(data):
                raise ValueError(f"tensor #{index} {list(shape)} needs {nbytes} bytes, only {len(data) - pos} left")
            pos += nbytes
            tensors.append((dtype, shape))
    except (struct.error, IndexError, ValueError) as e:
        raise InferenceModelError(f"{path}: truncated or corrupt parameters file ({e})") from None
    return tensors


class _InfoUnpickler(pickle.Unpickler):
    """``.pdiparams.info`` is a pickle of plain dicts, strings and booleans: nothing else is resolved."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it references {module}.{name}")


def read_structured_names(path: str | os.PathLike) -> dict[str, str]:
    """``{internal parameter name: structured name}`` from a ``.pdiparams.info`` file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            info = _InfoUnpickler(f).load()
    except Exception as e:  # any parse failure means the same thing to the caller
        raise InferenceModelError(f"{path}: unreadable .pdiparams.info ({type(e).__name__}: {e})") from None
    if not isinstance(info, dict):
        raise InferenceModelError(f"{path}: expected a dict, found {type(info).__name__}")
    names = {}
    for internal, entry in info.items():
        if isinstance(entry, dict) and isinstance(entry.get("structured_name"), str):
            names[str(internal)] = entry["structured_name"]
    return names
