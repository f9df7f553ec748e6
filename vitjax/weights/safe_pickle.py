"""A pickle reader that can only build what Paddle writes: plain containers and numeric arrays.

Python's unpickler is a small virtual machine that calls whatever a file names; even with
``find_class`` restricted, its C implementation allocates memo tables from indices in the
file, recurses into nested keys, and lets an allowed ``numpy.ndarray`` build arrays with
zero strides or object items. This module interprets the opcodes itself instead, and
accepts only the subset that ``paddle.save`` (pickle protocols 2 to 4) and Paddle's
``.pdiparams.info`` writer produce:

* containers: dicts (``OrderedDict`` included, returned as ordered ``dict``), lists, tuples;
* atoms: ``str``, ``bytes``, ``int`` (at most 64 bits), ``float``, ``bool``, ``None``;
* arrays, only through numpy's own ``_reconstruct(ndarray, (0,), b'b')`` + ``BUILD`` pattern,
  C-ordered, of a real numeric dtype (bool, integers, float16/32/64), whose raw bytes are
  exactly ``prod(shape) * itemsize`` long. The array is a fresh, owning, native-endian copy.

Nothing is ever called: the globals a file names become inert markers, and ``REDUCE`` and
``BUILD`` accept only the handful of (marker, arguments) shapes above. Every count that
costs memory (stack, memo, containers, nesting) is bounded before it grows, and the pass over
the file is linear, so a hostile file costs at most a small multiple of its own size in
memory (plus the arrays it really holds) and one pass in time. Every refusal is a
:class:`SafePickleError` with a one-line reason; callers add the file's name.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np


class SafePickleError(ValueError):
    """The bytes are not a pickle this reader accepts; the message says why, in one line."""


# Real numeric dtypes Paddle's parameters and buffers use (numpy's type strings, without byte order).
ARRAY_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
MAX_DEPTH = 32  # containers inside containers
MAX_TUPLE_DEPTH = 8  # tuples inside tuples (hashing and printing them recurse in C)
MAX_STACK = 200_000
MAX_DIMS = 32
MAX_GLOBAL_LINE = 256


class _Global:
    """An inert marker for a global the file names; never called."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


_RECONSTRUCT, _NDARRAY, _DTYPE, _ORDERED_DICT = "reconstruct", "ndarray", "dtype", "odict"
_CODECS_ENCODE, _BYTES = "encode", "bytes"
_KNOWN_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
    ("collections", "OrderedDict"): _ORDERED_DICT,
    ("_codecs", "encode"): _CODECS_ENCODE,  # how protocol 2 spells bytes...
    ("__builtin__", "bytes"): _BYTES,  # ...and empty bytes
    ("builtins", "bytes"): _BYTES,
}


class _PendingDtype:
    def __init__(self, code: str):
        self.code = code
        self.dtype: np.dtype | None = None


class _PendingArray:
    def __init__(self):
        self.array: np.ndarray | None = None


class _Mark:
    pass


_MARK = _Mark()


def _describe(value: Any) -> str:
    """A short, non-recursive description of a value for error messages."""
    if isinstance(value, str):
        return repr(value[:60] + ("..." if len(value) > 60 else ""))
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)[:60]
    return type(value).__name__


class _Machine:
    def __init__(self, data: bytes, allowed_globals: frozenset[str]):
        self.data = data
        self.view = memoryview(data)
        self.pos = 0
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.allowed = allowed_globals
        # Budgets proportional to the file: a legitimate file needs far fewer.
        self.max_memo = 50_000 + len(data) // 8
        self.max_containers = 50_000 + len(data) // 8
        self.containers = 0
        self.tuple_depth: dict[int, int] = {}
        self.keep_alive: list[Any] = []  # tuples whose depth is recorded by id stay alive while the machine runs

    # -- reading the byte stream --------------------------------------------------------------
    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise SafePickleError(f"truncated: needs {n} bytes at offset {self.pos}, {len(self.data) - self.pos} left")
        chunk = self.view[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> int | float:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + MAX_GLOBAL_LINE)
        if end < 0:
            raise SafePickleError(f"a global's name at offset {self.pos} is unterminated or too long")
        text = bytes(self.view[self.pos : end]).decode("ascii", errors="replace")
        self.pos = end + 1
        return text

    def text(self, n: int) -> str:
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError as e:
            raise SafePickleError(f"a string at offset {self.pos - n} is not UTF-8 ({e.reason})") from None

    # -- the stack ----------------------------------------------------------------------------
    def push(self, value: Any) -> None:
        if len(self.stack) >= MAX_STACK:
            raise SafePickleError(f"more than {MAX_STACK} values on the stack")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise SafePickleError(f"stack underflow at offset {self.pos - 1}")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise SafePickleError(f"no mark to pop at offset {self.pos - 1}")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def new_container(self, value: Any) -> Any:
        self.containers += 1
        if self.containers > self.max_containers:
            raise SafePickleError(f"more than {self.max_containers} containers for a file of {len(self.data)} bytes")
        return value

    def new_tuple(self, items: list[Any]) -> tuple:
        depth = 1
        for item in items:
            if isinstance(item, (list, dict)):
                raise SafePickleError("a tuple holds a list or dict, which Paddle never writes")
            if isinstance(item, tuple):
                depth = max(depth, 1 + self.tuple_depth.get(id(item), 1))
        if depth > MAX_TUPLE_DEPTH:
            raise SafePickleError(f"tuples nested more than {MAX_TUPLE_DEPTH} deep")
        value = self.new_container(tuple(items))
        if depth > 1:
            self.tuple_depth[id(value)] = depth
            self.keep_alive.append(value)
        return value

    def memo_put(self, index: int) -> None:
        if not self.stack:
            raise SafePickleError(f"memoizing an empty stack at offset {self.pos}")
        if index not in self.memo and len(self.memo) >= self.max_memo:
            raise SafePickleError(f"more than {self.max_memo} memo entries for a file of {len(self.data)} bytes")
        self.memo[index] = self.stack[-1]

    def memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise SafePickleError(f"memo index {index} was never stored")
        self.push(self.memo[index])

    # -- the only calls a file can express ------------------------------------------------------
    def reduce(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise SafePickleError(f"REDUCE of {_describe(func)}, which a Paddle file never contains")
        kind = _KNOWN_GLOBALS.get((func.module, func.name))
        if kind == _RECONSTRUCT:
            if (
                len(args) == 3
                and isinstance(args[0], _Global)
                and _KNOWN_GLOBALS.get((args[0].module, args[0].name)) == _NDARRAY
                and args[1] == (0,)
                and isinstance(args[2], (bytes, memoryview))
                and bytes(args[2]) == b"b"
            ):
                return _PendingArray()
            raise SafePickleError("numpy array reconstruction with arguments numpy never writes")
        if kind == _DTYPE:
            if len(args) == 3 and isinstance(args[0], str) and args[1] in (False, 0) and args[2] in (True, 1):
                return _PendingDtype(args[0])
            raise SafePickleError("numpy dtype with arguments numpy never writes")
        if kind == _ORDERED_DICT:
            if args == ():
                return self.new_container({})
            raise SafePickleError("OrderedDict with arguments")
        if kind == _CODECS_ENCODE:
            if len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1":
                try:
                    return args[0].encode("latin-1")
                except UnicodeEncodeError:
                    raise SafePickleError("bytes (protocol 2) outside latin-1") from None
            raise SafePickleError("_codecs.encode with arguments pickle never writes")
        if kind == _BYTES:
            if args == ():
                return b""
            raise SafePickleError("bytes() with arguments pickle never writes")
        raise SafePickleError(f"it calls {func}, which a Paddle file never contains")

    def build(self, target: Any, state: Any) -> None:
        if isinstance(target, _PendingDtype):
            self.build_dtype(target, state)
        elif isinstance(target, _PendingArray):
            self.build_array(target, state)
        else:
            raise SafePickleError(f"BUILD on {_describe(target)}, which a Paddle file never contains")

    @staticmethod
    def build_dtype(pending: _PendingDtype, state: Any) -> None:
        if pending.dtype is not None:
            raise SafePickleError("a dtype is built twice")
        if not (
            isinstance(state, tuple)
            and len(state) == 8
            and state[0] == 3
            and state[2:5] == (None, None, None)
            and state[5:] == (-1, -1, 0)
            and state[1] in ("<", ">", "|", "=")
        ):
            raise SafePickleError(f"dtype {pending.code!r} with a state numpy never writes for a numeric type")
        if pending.code not in ARRAY_DTYPES:
            raise SafePickleError(
                f"arrays of dtype {pending.code!r}; only bool, integer and float16/32/64 arrays are allowed"
            )
        order = state[1]
        dtype = np.dtype(pending.code)
        if order in "<>" and dtype.itemsize > 1:
            dtype = dtype.newbyteorder(order)
        pending.dtype = dtype

    @staticmethod
    def build_array(pending: _PendingArray, state: Any) -> None:
        if pending.array is not None:
            raise SafePickleError("an array is built twice")
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise SafePickleError("array state numpy never writes")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _PendingDtype) or dtype.dtype is None:
            raise SafePickleError("array of an unresolved dtype")
        if fortran not in (False, 0):
            raise SafePickleError("a Fortran-ordered array, which Paddle never writes")
        if not isinstance(shape, tuple) or len(shape) > MAX_DIMS or not all(type(d) is int and d >= 0 for d in shape):
            raise SafePickleError(f"array shape {_describe(shape)} is not a tuple of at most {MAX_DIMS} sizes >= 0")
        if not isinstance(raw, (bytes, memoryview)):
            raise SafePickleError(f"array data is a {_describe(raw)}, not bytes")
        expected = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != expected:
            raise SafePickleError(
                f"array of shape {list(shape)} {dtype.dtype.name} needs {expected} bytes, the file holds {len(raw)}"
            )
        array = np.frombuffer(raw, dtype=dtype.dtype).reshape(shape)
        if dtype.dtype.kind == "b":  # any non-zero byte is True, as numpy's own bool arithmetic reads it
            pending.array = np.array(array.view(np.uint8) != 0, order="C")
        else:
            pending.array = np.array(array, dtype=dtype.dtype.newbyteorder("="), order="C", copy=True)

    def run(self) -> Any:
        data = self.data
        if data[:1] != b"\x80" or len(data) < 2 or not 2 <= data[1] <= 5:
            raise SafePickleError("not a pickle of protocol 2 to 5")
        while True:
            if self.pos >= len(data):
                raise SafePickleError("truncated: no STOP opcode")
            op = data[self.pos]
            self.pos += 1
            handler = _OPS.get(op)
            if handler is None:
                raise SafePickleError(
                    f"opcode {bytes([op])!r} at offset {self.pos - 1}, which a Paddle file never contains"
                )
            if handler(self):
                break
        if self.marks or len(self.stack) != 1:
            raise SafePickleError("the stack is not a single value at STOP")
        if self.pos != len(data):
            raise SafePickleError(f"{len(data) - self.pos} bytes after the end of the pickle")
        return _finish(self.stack[0])


def _finish(root: Any) -> Any:
    """Replaces built arrays for their markers, checking depth and the absence of cycles, without recursion."""

    def resolve(value: Any) -> Any:
        if isinstance(value, _PendingArray):
            if value.array is None:
                raise SafePickleError("an array that is never built")
            return value.array
        if isinstance(value, (_PendingDtype, _Global, _Mark)):
            raise SafePickleError(f"a bare {type(value).__name__.strip('_')} where data belongs")
        if isinstance(value, memoryview):
            return bytes(value)
        return value

    root = resolve(root)
    if isinstance(root, tuple):
        root = list(root)  # only the top level can be rebuilt in place; tuples inside hold atoms and arrays
    pending: list[tuple[Any, int]] = [(root, 1)]
    seen: set[int] = set()
    while pending:
        value, depth = pending.pop()
        if not isinstance(value, (list, dict, tuple)):
            continue
        if not isinstance(value, tuple):  # tuples are immutable and hold no lists or dicts: no cycles
            if id(value) in seen:
                raise SafePickleError("a list or dict appears twice (shared or cyclic), which Paddle never writes")
            seen.add(id(value))
        if depth > MAX_DEPTH:
            raise SafePickleError(f"containers nested more than {MAX_DEPTH} deep")
        if isinstance(value, list):
            for i, item in enumerate(value):
                value[i] = resolve(item)
                pending.append((value[i], depth + 1))
        elif isinstance(value, dict):
            for key in value:
                value[key] = resolve(value[key])
                pending.append((value[key], depth + 1))
        else:  # tuples hold atoms and tuples only, in data (arrays, dtypes and markers are for REDUCE/BUILD)
            for item in value:
                if isinstance(item, tuple):
                    pending.append((item, depth + 1))
                elif not isinstance(item, (*_KEY_TYPES, bytes)):
                    raise SafePickleError(f"a tuple holds a {_describe(item)} where data belongs")
    return root


def _op_table() -> dict[int, Any]:
    ops: dict[int, Any] = {}

    def op(code: bytes):
        def register(fn):
            ops[code[0]] = fn
            return fn

        return register

    @op(b"\x80")
    def proto(m: _Machine):
        version = m.take(1)[0]
        if not 2 <= version <= 5 or m.pos != 2:
            raise SafePickleError(f"protocol {version} header at offset {m.pos - 2}")

    @op(b"\x95")
    def frame(m: _Machine):
        size = m.unpack("<Q")
        if size > len(m.data) - m.pos:
            raise SafePickleError(f"frame of {size} bytes runs past the end")

    @op(b".")
    def stop(m: _Machine):
        return True

    @op(b"(")
    def mark(m: _Machine):
        m.marks.append(len(m.stack))

    @op(b"}")
    def empty_dict(m: _Machine):
        m.push(m.new_container({}))

    @op(b"]")
    def empty_list(m: _Machine):
        m.push(m.new_container([]))

    @op(b")")
    def empty_tuple(m: _Machine):
        m.push(())

    @op(b"t")
    def tuple_(m: _Machine):
        items = m.pop_mark()
        m.push(m.new_tuple(items))

    def tuple_n(n: int):
        def build(m: _Machine):
            items = [m.pop() for _ in range(n)][::-1]
            m.push(m.new_tuple(items))

        return build

    ops[0x85], ops[0x86], ops[0x87] = tuple_n(1), tuple_n(2), tuple_n(3)

    @op(b"l")
    def list_(m: _Machine):
        m.push(m.new_container(m.pop_mark()))

    @op(b"d")
    def dict_(m: _Machine):
        items = m.pop_mark()
        if len(items) % 2:
            raise SafePickleError("DICT with an odd number of items")
        target = m.new_container({})
        _set_items(target, items)
        m.push(target)

    @op(b"a")
    def append(m: _Machine):
        item = m.pop()
        target = m.pop()
        if not isinstance(target, list):
            raise SafePickleError(f"APPEND to a {_describe(target)}")
        target.append(item)
        m.push(target)

    @op(b"e")
    def appends(m: _Machine):
        items = m.pop_mark()
        target = m.pop()
        if not isinstance(target, list):
            raise SafePickleError(f"APPENDS to a {_describe(target)}")
        target.extend(items)
        m.push(target)

    @op(b"s")
    def setitem(m: _Machine):
        value = m.pop()
        key = m.pop()
        target = m.pop()
        if not isinstance(target, dict):
            raise SafePickleError(f"SETITEM on a {_describe(target)}")
        _set_items(target, [key, value])
        m.push(target)

    @op(b"u")
    def setitems(m: _Machine):
        items = m.pop_mark()
        target = m.pop()
        if not isinstance(target, dict) or len(items) % 2:
            raise SafePickleError(f"SETITEMS on a {_describe(target)} with {len(items)} items")
        _set_items(target, items)
        m.push(target)

    @op(b"N")
    def none(m: _Machine):
        m.push(None)

    @op(b"\x88")
    def true(m: _Machine):
        m.push(True)

    @op(b"\x89")
    def false(m: _Machine):
        m.push(False)

    @op(b"J")
    def binint(m: _Machine):
        m.push(m.unpack("<i"))

    @op(b"K")
    def binint1(m: _Machine):
        m.push(m.take(1)[0])

    @op(b"M")
    def binint2(m: _Machine):
        m.push(m.unpack("<H"))

    @op(b"\x8a")
    def long1(m: _Machine):
        n = m.take(1)[0]
        if n > 8:
            raise SafePickleError(f"an integer of {n} bytes (at most 8 allowed)")
        m.push(int.from_bytes(m.take(n), "little", signed=True))

    @op(b"G")
    def binfloat(m: _Machine):
        m.push(m.unpack(">d"))

    @op(b"\x8c")
    def short_binunicode(m: _Machine):
        m.push(m.text(m.take(1)[0]))

    @op(b"X")
    def binunicode(m: _Machine):
        m.push(m.text(m.unpack("<I")))

    @op(b"\x8d")
    def binunicode8(m: _Machine):
        m.push(m.text(m.unpack("<Q")))

    @op(b"C")
    def short_binbytes(m: _Machine):
        m.push(m.take(m.take(1)[0]))

    @op(b"B")
    def binbytes(m: _Machine):
        m.push(m.take(m.unpack("<I")))

    @op(b"\x8e")
    def binbytes8(m: _Machine):
        m.push(m.take(m.unpack("<Q")))

    def resolve_global(m: _Machine, module: str, name: str):
        if (module, name) not in _KNOWN_GLOBALS or _KNOWN_GLOBALS[(module, name)] not in m.allowed:
            raise SafePickleError(f"it references {module}.{name}, which a Paddle file never contains")
        m.push(_Global(module, name))

    @op(b"c")
    def global_(m: _Machine):
        module = m.line()
        resolve_global(m, module, m.line())

    @op(b"\x93")
    def stack_global(m: _Machine):
        name = m.pop()
        module = m.pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise SafePickleError("STACK_GLOBAL of non-strings")
        resolve_global(m, module, name)

    @op(b"q")
    def binput(m: _Machine):
        m.memo_put(m.take(1)[0])

    @op(b"r")
    def long_binput(m: _Machine):
        m.memo_put(m.unpack("<I"))

    @op(b"\x94")
    def memoize(m: _Machine):
        m.memo_put(len(m.memo))

    @op(b"h")
    def binget(m: _Machine):
        m.memo_get(m.take(1)[0])

    @op(b"j")
    def long_binget(m: _Machine):
        m.memo_get(m.unpack("<I"))

    @op(b"R")
    def reduce(m: _Machine):
        args = m.pop()
        func = m.pop()
        m.push(m.reduce(func, args))

    @op(b"b")
    def build(m: _Machine):
        state = m.pop()
        target = m.pop()
        m.build(target, state)
        m.push(target)

    return ops


_KEY_TYPES = (str, int, float, bool, type(None))


def _set_items(target: dict, items: list[Any]) -> None:
    for key, value in zip(items[::2], items[1::2]):
        # Atoms only: Paddle's keys are strings (and ints); a tuple key could nest shared tuples whose
        # hash Python recomputes per level (a 2 KB file with 100^8 hash calls).
        if not isinstance(key, _KEY_TYPES):
            raise SafePickleError(f"a dict key is a {_describe(key)}, not a string or number")
        target[key] = value


_OPS = _op_table()

ARRAYS = frozenset({_RECONSTRUCT, _NDARRAY, _DTYPE, _ORDERED_DICT, _CODECS_ENCODE, _BYTES})
PLAIN_DATA = frozenset({_ORDERED_DICT})


def safe_loads(data: bytes, *, allow: frozenset[str] = ARRAYS) -> Any:
    """The value pickled in ``data``; raises :class:`SafePickleError` for anything outside the subset.

    ``allow`` is :data:`ARRAYS` (dicts of numpy arrays, as ``paddle.save`` writes) or
    :data:`PLAIN_DATA` (containers and atoms only, as in ``.pdiparams.info``).
    """
    return _Machine(bytes(data), allow).run()
