"""Reading ``.pdiparams`` framing and ``.pdiparams.info`` names without Paddle.

Neither function loads parameters into Paddle: :func:`scan_params_file` walks the
binary framing to catch a truncated file before Paddle does (Paddle aborts with a C++
trace or reads garbage), and :func:`read_structured_names` reads the ``.info`` pickle
with a pickle reader that builds plain data only and calls nothing.

Both read untrusted bytes in one linear pass: every size and dimension is checked as
unsigned and against the bytes left in the file before anything is allocated.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from interop.errors import InferenceModelError
from vitjax.weights.safe_pickle import PLAIN_DATA, SafePickleError, safe_loads

# Paddle's VarType enum -> numpy dtype, for the types a parameters file can hold.
_PADDLE_DTYPES = {
    0: np.bool_,
    1: np.int16,
    2: np.int32,
    3: np.int64,
    4: np.float16,
    5: np.float32,
    6: np.float64,
    20: np.uint8,
    21: np.int8,
    22: np.uint16,
    23: np.complex64,
    24: np.complex128,
}


MAX_DIMS = 32  # far more than any tensor has; bounds the work per description


def read_varint(data: bytes, pos: int, end: int | None = None) -> tuple[int, int]:
    """A protobuf base-128 varint at ``pos`` (at most 10 bytes, before ``end``): ``(value, position after it)``."""
    end = len(data) if end is None else end
    value = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise ValueError("a number runs past the end of its field")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise ValueError("a number does not fit in 64 bits")
            return value, pos
    raise ValueError("a number is longer than 10 bytes")


def _dim(value: int) -> int:
    """A dimension: an int64 on the wire, which must be >= 0 in a stored tensor."""
    signed = value - (1 << 64) if value >= 1 << 63 else value
    if signed < 0:
        raise ValueError(f"negative dimension {signed}")
    return signed


def _tensor_desc(desc: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    """Decodes Paddle's ``TensorDesc`` message (field 1: data type, field 2: dims)."""
    pos, dtype, dims = 0, None, []
    while pos < len(desc):
        tag, pos = read_varint(desc, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(desc, pos)
            if field == 1:
                dtype = value
            elif field == 2:
                dims.append(_dim(value))
        elif wire == 2:
            length, pos = read_varint(desc, pos)
            end = pos + length
            if end > len(desc):
                raise ValueError("a field runs past the end of the tensor description")
            if field == 2:  # packed dims
                while pos < end:
                    value, pos = read_varint(desc, pos, end)
                    dims.append(_dim(value))
            pos = end
        elif wire in (1, 5):  # fixed 64/32-bit fields: skipped
            pos += 8 if wire == 1 else 4
            if pos > len(desc):
                raise ValueError("a field runs past the end of the tensor description")
        else:
            raise ValueError(f"unexpected wire type {wire} in a tensor description")
        if len(dims) > MAX_DIMS:
            raise ValueError(f"more than {MAX_DIMS} dimensions")
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
            if lod_levels > (len(data) - pos) // 8:
                raise ValueError(
                    f"tensor #{index}: {lod_levels} LoD levels cannot fit in the {len(data) - pos} bytes left"
                )
            for _ in range(lod_levels):
                (size,) = struct.unpack_from("<Q", data, pos)
                if size > len(data) - pos - 8:
                    raise ValueError(f"tensor #{index}: a LoD level of {size} bytes runs past the end")
                pos += 8 + size
            _tensor_version, desc_size = struct.unpack_from("<Ii", data, pos)
            pos += 8
            if desc_size < 0 or pos + desc_size > len(data):
                raise ValueError(f"tensor #{index}: description runs past the end")
            dtype, shape = _tensor_desc(data[pos : pos + desc_size])
            pos += desc_size
            nbytes = dtype.itemsize * math.prod(shape)  # Python ints: no overflow; dims are >= 0
            if nbytes > len(data) - pos:
                raise ValueError(f"tensor #{index} {list(shape)} needs {nbytes} bytes, only {len(data) - pos} left")
            pos += nbytes
            tensors.append((dtype, shape))
    except (struct.error, IndexError, ValueError, OverflowError) as e:
        raise InferenceModelError(f"{path}: truncated or corrupt parameters file ({e})") from None
    return tensors


def read_structured_names(path: str | os.PathLike) -> dict[str, str]:
    """``{internal parameter name: structured name}`` from a ``.pdiparams.info`` file.

    The file is a pickle of plain dicts, strings and booleans; it is read by
    :func:`~vitjax.weights.safe_pickle.safe_loads`, which builds nothing else and calls nothing.
    """
    path = Path(path)
    try:
        info = safe_loads(path.read_bytes(), allow=PLAIN_DATA)
    except SafePickleError as e:
        raise InferenceModelError(f"{path}: unreadable .pdiparams.info ({e})") from None
    except OSError as e:
        raise InferenceModelError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(info, dict):
        raise InferenceModelError(f"{path}: expected a dict, found {type(info).__name__}")
    names = {}
    for internal, entry in info.items():
        if isinstance(entry, dict) and isinstance(entry.get("structured_name"), str):
            names[str(internal)] = entry["structured_name"]
    return names
