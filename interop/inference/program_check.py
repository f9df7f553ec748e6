"""Checks a program file's framing before Paddle parses it: well-formed, bounded, one linear pass.

Paddle reads ``inference.json`` (PIR) and ``inference.pdmodel`` (protobuf ``ProgramDesc``)
with its own C++ parsers, which abort with a C++ trace on some damaged files. These checks
run first, in Python: the JSON must parse (Python's parser: linear) as one object nested at most
``MAX_JSON_DEPTH`` deep (measured without recursion), the protobuf's top-level fields must be framed within the file, and
either must be at most ``MAX_PROGRAM_BYTES``. What the program then computes is Paddle's to
read (see docs/security.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from interop.errors import InferenceModelError
from interop.inference.pdiparams import read_varint

MAX_PROGRAM_BYTES = 512 << 20
MAX_JSON_DEPTH = 64  # Paddle 3.3's PIR programs of our models nest 8-10 deep


def json_depth(value: Any) -> int:
    """The deepest nesting of lists and dicts in a parsed JSON value (no recursion)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item if isinstance(child, (list, dict)))
    return deepest


def _check_json(path: Path, data: bytes) -> None:
    # Python's JSON parser is linear, and refuses nesting past the recursion limit with RecursionError.
    try:
        program = json.loads(data)
    except RecursionError:
        raise InferenceModelError(f"{path}: JSON nested deeper than {sys.getrecursionlimit()} levels") from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InferenceModelError(f"{path}: not a PIR program (invalid JSON: {e})") from None
    if not isinstance(program, dict):
        raise InferenceModelError(f"{path}: not a PIR program (a JSON {type(program).__name__}, not an object)")
    depth = json_depth(program)
    if depth > MAX_JSON_DEPTH:
        raise InferenceModelError(f"{path}: JSON nested {depth} deep (at most {MAX_JSON_DEPTH})")


def _check_protobuf(path: Path, data: bytes) -> None:
    pos = 0
    try:
        while pos < len(data):
            tag, pos = read_varint(data, pos)
            wire = tag & 7
            if tag >> 3 == 0:
                raise ValueError("field number 0")
            if wire == 0:
                _, pos = read_varint(data, pos)
            elif wire == 2:
                length, pos = read_varint(data, pos)
                if length > len(data) - pos:
                    raise ValueError(f"a field of {length} bytes runs past the end")
                pos += length
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
                if pos > len(data):
                    raise ValueError("a fixed-size field runs past the end")
            else:
                raise ValueError(f"wire type {wire}")
    except ValueError as e:
        raise InferenceModelError(f"{path}: not a Paddle program (corrupt protobuf at byte {pos}: {e})") from None


def check_program_file(path: str | Path) -> None:
    """Raises :class:`InferenceModelError` (one line, naming the file) unless the program file is well framed."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PROGRAM_BYTES:
            raise InferenceModelError(f"{path}: {size} bytes; a program file is at most {MAX_PROGRAM_BYTES}")
        data = path.read_bytes()
    except OSError as e:
        raise InferenceModelError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise InferenceModelError(f"{path}: file is empty")
    if path.suffix == ".json":
        _check_json(path, data)
    else:
        _check_protobuf(path, data)
