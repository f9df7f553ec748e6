"""Paddle inference models (what PaddleClas's ``tools/export_model.py`` writes), both ways.

Export: Flax variables -> the Paddle mirror (:mod:`interop.paddle_models`) -> an
inference model directory that PaddleClas's ``deploy/python/predict_cls.py`` runs
unchanged: file prefix ``inference``, one NCHW float32 input named ``x`` with a
dynamic batch size, one output (softmax probabilities by default, as PaddleClas's
``ExportModel`` appends a softmax; logits on request).

* ``format="pir"`` writes ``inference.json`` + ``inference.pdiparams`` (Paddle 3).
* ``format="legacy"`` writes ``inference.pdmodel`` + ``inference.pdiparams`` (Paddle 2.x).
  Paddle 3.3's ``to_static`` cannot build the legacy program for these models, so we
  build it in Paddle's old static-graph mode by calling the mirror directly; two
  functions the mirror uses (``paddle.matmul`` and ``F.gelu``) have no old-IR
  implementation in Paddle 3.3 and are given one for the duration of the build.

Import: an inference model stores its parameters under Paddle's internal names
(``linear_8.w_0``, ``layer_norm_3.b_0``, ``tnt_0.w_1`` ...), not PaddleClas's
structured keys. We recover the keys from the ``.pdiparams.info`` file when there is
one (Paddle 2.x ``jit.save`` writes the structured names there); otherwise from the
internal names themselves: the number in ``linear_8`` counts layers of that type in
creation order, which is the order of :func:`vitjax.weights.mapping.key_table`, and every
parameter's shape must match. The result is then checked by running the inference
program and our Flax model on the same random batch: an import either reproduces
the model's outputs or fails loudly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import pickle
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from interop._paddle import require_paddle, require_paddle2onnx
from vitjax.weights.mapping import KeyRule, key_table
from vitjax.weights.pdparams import PdparamsError, read_pdparams
from vitjax.weights.convert import Variables, guess_model, infer_num_classes, state_dict_to_variables, variables_to_state_dict
from vitjax.models.registry import create_model, get_spec, list_models

Format = Literal["pir", "legacy"]
MODEL_PREFIX = "inference"  # PaddleClas: save_inference_dir/inference.*
INPUT_NAME = "x"  # what Paddle names the unnamed InputSpec of forward(self, x)
PROGRAM_FILES: dict[str, str] = {"pir": f"{MODEL_PREFIX}.json", "legacy": f"{MODEL_PREFIX}.pdmodel"}
PARAMS_FILE = f"{MODEL_PREFIX}.pdiparams"
INFO_FILE = f"{MODEL_PREFIX}.pdiparams.info"
IMPORT_ATOL = 1e-4  # fp32 bar for "the imported model computes what the file computes"


class InferenceModelError(PdparamsError):
    """An inference model directory that cannot be written, read, or mapped to a model."""


# --------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class InferenceModelFiles:
    """The files of one inference model directory."""

    directory: Path
    format: Format
    program: Path
    params: Path
    info: Path | None


def locate_inference_model(model_dir: str | os.PathLike) -> InferenceModelFiles:
    """Finds ``inference.json`` or ``inference.pdmodel`` + ``inference.pdiparams`` in ``model_dir``.

    A directory with both program files is read as PIR (Paddle 3 prefers it too).
    """
    directory = Path(model_dir)
    if not directory.exists():
        raise InferenceModelError(f"{directory}: no such inference model directory")
    if not directory.is_dir():
        raise InferenceModelError(f"{directory}: not a directory (expected an inference model directory)")
    for fmt in ("pir", "legacy"):
        program = directory / PROGRAM_FILES[fmt]
        if program.is_file():
            break
    else:
        raise InferenceModelError(
            f"{directory}: no {PROGRAM_FILES['pir']} or {PROGRAM_FILES['legacy']} (not a Paddle inference model directory)"
        )
    params = directory / PARAMS_FILE
    if not params.is_file():
        raise InferenceModelError(f"{params}: missing (the program {program.name} has no parameters file beside it)")
    info = directory / INFO_FILE
    return InferenceModelFiles(directory, fmt, program, params, info if info.is_file() else None)


# Paddle's VarType enum -> numpy dtype, for the types a parameters file can hold.
_PADDLE_DTYPES = {0: np.bool_, 1: np.int16, 2: np.int32, 3: np.int64, 4: np.float16, 5: np.float32, 6: np.float64,
                  20: np.uint8, 21: np.int8, 22: np.uint16, 23: np.complex64, 24: np.complex128}


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
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
        info = _InfoUnpickler(open(path, "rb")).load()
    except Exception as e:  # any parse failure means the same thing to the caller
        raise InferenceModelError(f"{path}: unreadable .pdiparams.info ({type(e).__name__}: {e})") from None
    if not isinstance(info, dict):
        raise InferenceModelError(f"{path}: expected a dict, found {type(info).__name__}")
    names = {}
    for internal, entry in info.items():
        if isinstance(entry, dict) and isinstance(entry.get("structured_name"), str):
            names[str(internal)] = entry["structured_name"]
    return names


# --------------------------------------------------------------------------- export


def _position_embedding_img_size(state: Mapping[str, np.ndarray], model_name: str) -> int:
    """The input resolution the position embeddings in ``state`` were made for."""
    arch = get_spec(model_name).arch
    key = "pos_embed" if "pos_embed" in state else "patch_pos"
    tokens = state[key].shape[1] - (arch.num_prefix_tokens if key == "pos_embed" else 1)
    return math.isqrt(tokens) * arch.patch_size


def resolve_variables(source: Variables | str | os.PathLike, model_name: str | None) -> tuple[str, Variables]:
    """``(model_name, variables)`` from in-memory variables, a ``.pdparams`` file, an orbax
    checkpoint or a training workdir. Only a ``.pdparams`` file can name its model."""
    if isinstance(source, Mapping):
        if model_name is None:
            raise InferenceModelError("in-memory variables: pass the model name")
        return model_name, dict(source)
    path = Path(source)
    if path.suffix == ".pdparams":
        state = read_pdparams(path)
        name = model_name or guess_model(state, source=str(path))
        return name, state_dict_to_variables(state, name, source=str(path))
    if model_name is None:
        raise InferenceModelError(f"{path}: pass the model name for an orbax checkpoint or workdir")
    from vitjax.checkpoints import load_variables

    return model_name, load_variables(path)


@contextlib.contextmanager
def _atomic_directory(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yields a temporary directory beside ``out_dir`` that becomes ``out_dir`` only on success."""
    out_dir = out_dir.absolute()
    if out_dir.exists() and not overwrite:
        raise InferenceModelError(f"{out_dir}: already exists; refusing to overwrite (pass overwrite=True / --overwrite)")
    if not out_dir.parent.is_dir():
        raise InferenceModelError(f"{out_dir}: parent directory {out_dir.parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / "previous")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mirror_with_weights(state: Mapping[str, np.ndarray], model_name: str, img_size: int):
    from interop.paddle_models import build_paddle_model, load_numpy_state

    return load_numpy_state(build_paddle_model(model_name, infer_num_classes(state), img_size), dict(state))


def _export_wrapper(model, softmax: bool):
    """The mirror with PaddleClas's ``ExportModel`` output activation (softmax) appended."""
    paddle = require_paddle()

    class ExportModel(paddle.nn.Layer):
        def __init__(self, base_model, softmax: bool):
            super().__init__()
            self.base_model = base_model
            self.out_act = paddle.nn.Softmax(axis=-1) if softmax else None

        def forward(self, x):
            x = self.base_model(x)
            return self.out_act(x) if self.out_act is not None else x

    wrapper = ExportModel(model, softmax)
    wrapper.eval()
    return wrapper


def _save_pir(state, model_name: str, img_size: int, softmax: bool, prefix: Path) -> None:
    paddle = require_paddle()

    wrapper = _export_wrapper(_mirror_with_weights(state, model_name, img_size), softmax)
    spec = paddle.static.InputSpec([None, 3, img_size, img_size], "float32", name=INPUT_NAME)
    static = paddle.jit.to_static(wrapper, input_spec=[spec], full_graph=True)
    paddle.jit.save(static, str(prefix))


@contextlib.contextmanager
def _old_ir_shims() -> Iterator[None]:
    """Old-static-graph implementations of the two functions the mirror calls that Paddle 3.3
    only implements for dygraph and PIR. Not thread-safe: they are swapped in module-wide."""
    paddle = require_paddle()
    import paddle.nn.functional as F
    from paddle.base.layer_helper import LayerHelper

    matmul, gelu = paddle.matmul, F.gelu

    def old_ir(op_type: str, inputs: dict, attrs: dict):
        helper = LayerHelper(op_type)
        out = helper.create_variable_for_type_inference(next(iter(inputs.values())).dtype)
        helper.append_op(type=op_type, inputs=inputs, outputs={"Out": out}, attrs=attrs)
        return out

    def matmul_any_ir(x, y, transpose_x=False, transpose_y=False, name=None):
        if paddle.in_dynamic_mode() or paddle.framework.in_pir_mode():
            return matmul(x, y, transpose_x=transpose_x, transpose_y=transpose_y)
        return old_ir("matmul_v2", {"X": x, "Y": y}, {"trans_x": transpose_x, "trans_y": transpose_y})

    def gelu_any_ir(x, approximate=False, name=None):
        if paddle.in_dynamic_mode() or paddle.framework.in_pir_mode():
            return gelu(x, approximate=approximate)
        return old_ir("gelu", {"X": x}, {"approximate": bool(approximate)})

    paddle.matmul, F.gelu = matmul_any_ir, gelu_any_ir
    try:
        yield
    finally:
        paddle.matmul, F.gelu = matmul, gelu


def _save_legacy(state, model_name: str, img_size: int, softmax: bool, prefix: Path) -> None:
    paddle = require_paddle()
    from paddle import pir_utils

    from interop.paddle_models import build_paddle_model

    with pir_utils.OldIrGuard(), _old_ir_shims():
        paddle.enable_static()
        try:
            main, startup = paddle.static.Program(), paddle.static.Program()
            with paddle.static.program_guard(main, startup):
                wrapper = _export_wrapper(build_paddle_model(model_name, infer_num_classes(state), img_size), softmax)
                images = paddle.static.data(INPUT_NAME, [None, 3, img_size, img_size], "float32")
                output = wrapper(images)
            executor = paddle.static.Executor(paddle.CPUPlace())
            scope = paddle.static.Scope()
            with paddle.static.scope_guard(scope):
                executor.run(startup)
                for key, parameter in wrapper.base_model.state_dict().items():
                    value = np.ascontiguousarray(state[key], dtype=np.float32)
                    scope.find_var(parameter.name).get_tensor().set(value, paddle.CPUPlace())
                paddle.static.save_inference_model(str(prefix), [images], [output], executor, program=main)
        finally:
            paddle.disable_static()


def export_inference_model(
    variables: Variables | str | os.PathLike,
    model_name: str | None,
    out_dir: str | os.PathLike,
    softmax: bool = True,
    format: Format = "pir",
    *,
    overwrite: bool = False,
) -> Path:
    """Writes a Paddle inference model directory computing ``model_name`` with ``variables``.

    ``variables`` may also be a ``.pdparams`` file, an orbax checkpoint or a workdir.
    The input is ``x``: NCHW float32, any batch size, at the resolution the position
    embeddings were trained for. The output is softmax probabilities (as PaddleClas
    exports) or, with ``softmax=False``, logits. The directory appears complete or not
    at all.
    """
    if format not in PROGRAM_FILES:
        raise InferenceModelError(f"unknown inference model format {format!r}; use 'pir' or 'legacy'")
    model_name, variables = resolve_variables(variables, model_name)
    state = variables_to_state_dict(variables, model_name)
    img_size = _position_embedding_img_size(state, model_name)
    with _atomic_directory(Path(out_dir), overwrite) as tmp:
        save = _save_pir if format == "pir" else _save_legacy
        save(state, model_name, img_size, softmax, tmp / MODEL_PREFIX)
        written = locate_inference_model(tmp)
        if written.format != format:  # a guard on Paddle's behaviour, not on user input
            raise InferenceModelError(f"{out_dir}: Paddle wrote {written.program.name}, not the {format} format")
    return Path(out_dir)


# --------------------------------------------------------------------------- import


@dataclasses.dataclass(frozen=True)
class LoadedProgram:
    """What an inference model directory holds, read through Paddle."""

    files: InferenceModelFiles
    parameters: dict[str, np.ndarray]  # internal name -> array
    input_shape: tuple[int, ...]
    output_op: str  # the op computing the output, e.g. "softmax"
    run: Any  # images (NCHW float32) -> output array


def _load_program(files: InferenceModelFiles) -> LoadedProgram:
    """Loads the program and parameters with Paddle's static executor (either format)."""
    paddle = require_paddle()
    from paddle import pir_utils

    records = scan_params_file(files.params)
    guard = contextlib.nullcontext() if files.format == "pir" else pir_utils.OldIrGuard()
    scope = paddle.static.Scope()
    with guard:
        paddle.enable_static()
        try:
            executor = paddle.static.Executor(paddle.CPUPlace())
            with paddle.static.scope_guard(scope):
                try:
                    program, feeds, fetches = paddle.static.load_inference_model(str(files.directory / MODEL_PREFIX), executor)
                except Exception as e:  # Paddle raises many types; all mean "not loadable"
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise InferenceModelError(f"{files.program}: Paddle cannot load this inference model ({first})") from None
            if len(feeds) != 1 or len(fetches) != 1:
                raise InferenceModelError(f"{files.program}: {len(feeds)} inputs and {len(fetches)} outputs; an image classifier has one of each")
            names = _persistable_names(program, files.format)
            if len(names) != len(records):
                raise InferenceModelError(f"{files.params}: holds {len(records)} tensors but {files.program.name} declares {len(names)} parameters")
            parameters = {name: np.array(scope.find_var(name).get_tensor()) for name in names}
            input_shape, output_op = _signature(program, feeds[0], fetches[0], files.format)
        finally:
            paddle.disable_static()

    def run(images: np.ndarray) -> np.ndarray:
        with guard:
            paddle.enable_static()
            try:
                with paddle.static.scope_guard(scope):
                    return np.asarray(executor.run(program, feed={feeds[0]: images}, fetch_list=fetches)[0])
            finally:
                paddle.disable_static()

    return LoadedProgram(files, parameters, input_shape, output_op, run)


def _persistable_names(program, fmt: Format) -> list[str]:
    if fmt == "pir":
        return [p.name for p in program.global_block().all_parameters()]
    return [v.name for v in program.list_vars() if v.persistable and v.name not in ("feed", "fetch")]


def _signature(program, feed: str, fetch, fmt: Format) -> tuple[tuple[int, ...], str]:
    """The input's declared shape and the name of the op producing the output."""
    if fmt == "pir":
        data = [op for op in program.global_block().ops if op.name() == "pd_op.data"]
        shape = tuple(data[0].result(0).shape) if data else ()
        return shape, fetch.get_defining_op().name().split(".")[-1]
    block = program.global_block()
    producers = [op.type for op in block.ops if fetch.name in op.output_arg_names]
    return tuple(block.var(feed).shape), producers[-1] if producers else ""


_INTERNAL_NAME = re.compile(r"^(?P<layer>.+)_(?P<index>\d+)\.(?P<role>[wb])_(?P<slot>\d+)$")
_LAYER_TYPES = ("linear", "layer_norm", "conv2d")  # Paddle's unique-name prefixes for nn.Linear/LayerNorm/Conv2D


def _layer_type(rule: KeyRule, rules_by_module: dict[str, list[KeyRule]]) -> str:
    """Which Paddle layer type owns a key-table entry ("own" for the model's own parameters)."""
    if "." not in rule.paddle_key:
        return "own"
    leaves = {r.flax_path[-1] for r in rules_by_module[rule.paddle_key.rsplit(".", 1)[0]]}
    kinds = {r.kind for r in rules_by_module[rule.paddle_key.rsplit(".", 1)[0]]}
    return "conv2d" if "conv" in kinds else "layer_norm" if "scale" in leaves else "linear"


@functools.lru_cache(maxsize=None)
def _paddle_shapes(model_name: str, num_classes: int, img_size: int) -> dict[str, tuple[int, ...]]:
    """PaddleClas key -> the shape Paddle stores it in, for one configuration of a model."""
    model = create_model(model_name, num_classes=num_classes, img_size=img_size)
    images = jax.ShapeDtypeStruct((1, img_size, img_size, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    shapes = {}
    for rule in key_table(model_name, has_head=num_classes > 0):
        leaf = params
        for part in rule.flax_path:
            leaf = leaf[part]
        shapes[rule.paddle_key] = rule.to_paddle(np.empty(leaf.shape, np.uint8)).shape
    return shapes


def _units_by_creation(parameters: Mapping[str, np.ndarray]) -> dict[str, list[dict[str, str]]]:
    """Internal parameters grouped into layers, per layer type, in creation order.

    ``linear_8.w_0`` and ``linear_8.b_0`` are one layer; the model's own parameters
    (``tnt_0.w_1``, ``create_parameter_3.w_0``) are one unit each.
    """
    layers: dict[str, dict[tuple, dict[str, str]]] = {}
    for name in parameters:
        match = _INTERNAL_NAME.match(name)
        if match is None:
            raise InferenceModelError(f"parameter {name!r} has no Paddle-generated name; cannot tell which layer it belongs to")
        layer, index, role, slot = match["layer"], int(match["index"]), match["role"], int(match["slot"])
        if layer in _LAYER_TYPES:
            layers.setdefault(layer, {}).setdefault((index,), {})[role] = name
        else:
            layers.setdefault("own", {})[(index, slot, layer)] = {"w": name}
    return {kind: [units[k] for k in sorted(units)] for kind, units in layers.items()}


def _units_by_table(model_name: str, has_head: bool) -> dict[str, list[dict[str, str]]]:
    table = key_table(model_name, has_head=has_head)
    by_module: dict[str, list[KeyRule]] = {}
    for rule in table:
        by_module.setdefault(rule.paddle_key.rsplit(".", 1)[0] if "." in rule.paddle_key else rule.paddle_key, []).append(rule)
    units: dict[str, dict[str, dict[str, str]]] = {}
    for rule in table:
        kind = _layer_type(rule, by_module)
        if kind == "own":
            units.setdefault(kind, {})[rule.paddle_key] = {"w": rule.paddle_key}
        else:
            module, leaf = rule.paddle_key.rsplit(".", 1)
            units.setdefault(kind, {}).setdefault(module, {})["w" if leaf == "weight" else "b"] = rule.paddle_key
    return {kind: list(mods.values()) for kind, mods in units.items()}


def structured_state_by_order(
    parameters: Mapping[str, np.ndarray], model_name: str, img_size: int
) -> dict[str, np.ndarray] | str:
    """Maps internal names to ``model_name``'s PaddleClas keys by layer creation order and shape.

    Returns the state dict, or a one-line reason it does not fit. Layers of one type
    are matched in order; the model's own parameters (tokens, position embeddings)
    are matched by shape, ties in creation order.
    """
    found = _units_by_creation(parameters)
    linears = found.get("linear", [])
    num_classes = parameters[linears[-1]["w"]].shape[-1] if linears and "w" in linears[-1] else 0
    shapes = _paddle_shapes(model_name, int(num_classes), img_size)
    wanted = _units_by_table(model_name, has_head=num_classes > 0)
    if set(found) != set(wanted):
        return f"layer types {sorted(found)} != {sorted(wanted)}"
    state: dict[str, np.ndarray] = {}
    for kind, table_units in wanted.items():
        file_units = found[kind]
        if len(file_units) != len(table_units):
            what = "own parameters" if kind == "own" else f"{kind} layers"
            return f"{len(file_units)} {what}, {model_name} has {len(table_units)}"
        if kind != "own":
            for file_unit, table_unit in zip(file_units, table_units):
                if set(file_unit) != set(table_unit):
                    return f"{file_unit} vs {table_unit}: bias present on one side only"
                for role, key in table_unit.items():
                    array = parameters[file_unit[role]]
                    if tuple(array.shape) != shapes[key]:
                        return f"{file_unit[role]} {list(array.shape)} cannot be {key} {list(shapes[key])}"
                    state[key] = array
            continue
        free = [unit["w"] for unit in file_units]
        for unit in table_units:
            key = unit["w"]
            fits = [name for name in free if tuple(parameters[name].shape) == shapes[key]]
            if not fits:
                return f"no parameter of shape {list(shapes[key])} for {key}"
            free.remove(fits[0])
            state[key] = parameters[fits[0]]
    return {rule.paddle_key: state[rule.paddle_key] for rule in key_table(model_name, has_head=num_classes > 0)}


def _strip_common_prefix(names: list[str]) -> list[str]:
    """``base_model.blocks.0...`` -> ``blocks.0...``: drops the export wrapper's attribute name."""
    parts = [n.split(".") for n in names]
    depth = 0
    while all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
    return [".".join(p[depth:]) for p in parts]


def _structured_state_from_info(parameters: Mapping[str, np.ndarray], info: Path) -> dict[str, np.ndarray]:
    names = read_structured_names(info)
    missing = [n for n in parameters if n not in names]
    if missing:
        raise InferenceModelError(f"{info}: no structured name for {', '.join(missing[:5])}")
    keys = _strip_common_prefix([names[n] for n in parameters])
    return dict(zip(keys, parameters.values()))


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    """An inference model turned back into Flax variables."""

    model_name: str
    variables: Variables
    softmax: bool  # whether the file's output is probabilities
    format: Format
    img_size: int
    num_classes: int
    max_abs_diff: float | None  # file output vs ours on a random batch (None: not verified)


def _candidate_states(loaded: LoadedProgram, model_name: str | None, img_size: int) -> dict[str, dict[str, np.ndarray]]:
    """Every registered model (or just ``model_name``) the parameters map onto, with its state dict."""
    source = str(loaded.files.directory)
    if loaded.files.info is not None:
        state = _structured_state_from_info(loaded.parameters, loaded.files.info)
        name = model_name or guess_model(state, source=source)
        return {name: state}
    names = [model_name] if model_name else list_models(include_test=True)
    fits, reasons = {}, {}
    for name in names:
        result = structured_state_by_order(loaded.parameters, name, img_size)
        if isinstance(result, str):
            reasons[name] = result
        else:
            fits[name] = result
    if not fits:
        n = len(loaded.parameters)
        if model_name:
            raise InferenceModelError(f"{source}: its {n} parameters do not fit {model_name}: {reasons[model_name]}")
        raise InferenceModelError(f"{source}: its {n} parameters fit no registered DeiT/TNT model (unknown architecture)")
    return fits


def _check_outputs(loaded: LoadedProgram, name: str, variables: Variables, img_size: int, num_classes: int, seed: int = 0):
    """Runs the file's program and our model on one random batch: ``(softmax?, max |diff|)``."""
    images = np.random.RandomState(seed).standard_normal((2, 3, img_size, img_size)).astype(np.float32)
    theirs = loaded.run(images)
    model = create_model(name, num_classes=num_classes, img_size=img_size)
    logits = np.asarray(jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1)))
    if theirs.shape != logits.shape:
        return None, math.inf
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    diffs = {False: float(np.abs(theirs - logits).max()), True: float(np.abs(theirs - probs).max())}
    softmax = loaded.output_op == "softmax" if diffs[True] <= IMPORT_ATOL and diffs[False] <= IMPORT_ATOL else diffs[True] < diffs[False]
    return softmax, diffs[softmax]


def read_inference_model(model_dir: str | os.PathLike, model_name: str | None = None, *, verify: bool = True) -> ImportedModel:
    """Recovers the model and Flax variables an inference model directory computes.

    Works on PaddleClas's exports and ours, PIR or legacy, with or without softmax,
    with or without ``.pdiparams.info``. With ``verify`` (the default) the result is
    run against the file's own program; a mismatch above 1e-4 is an error.
    """
    files = locate_inference_model(model_dir)
    loaded = _load_program(files)
    shape = loaded.input_shape
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[2] <= 0:
        raise InferenceModelError(f"{files.program}: input of shape {list(shape)} is not a [N, 3, S, S] image batch")
    img_size = int(shape[2])
    candidates = _candidate_states(loaded, model_name, img_size)
    results, failures = [], []
    for name, state in candidates.items():
        num_classes = infer_num_classes(state)
        try:
            variables = state_dict_to_variables(state, name, img_size=img_size, source=str(files.directory))
        except PdparamsError as e:
            failures.append(str(e))
            continue
        if not verify:
            results.append(ImportedModel(name, variables, loaded.output_op == "softmax", files.format, img_size, num_classes, None))
            continue
        softmax, diff = _check_outputs(loaded, name, variables, img_size, num_classes)
        if diff <= IMPORT_ATOL:
            results.append(ImportedModel(name, variables, bool(softmax), files.format, img_size, num_classes, diff))
        else:
            failures.append(f"{name}: outputs differ from the file's by {diff:.3g}")
    if len(results) == 1:
        return results[0]
    if not results:
        raise InferenceModelError(f"{files.directory}: no registered model reproduces this graph ({'; '.join(failures)})")
    raise InferenceModelError(f"{files.directory}: fits several models ({', '.join(r.model_name for r in results)}); pass the model name")


def load_inference_model(model_dir: str | os.PathLike, model_name: str | None = None, *, verify: bool = True) -> Variables:
    """Flax variables for the model a Paddle inference model directory holds (see :func:`read_inference_model`)."""
    return read_inference_model(model_dir, model_name, verify=verify).variables


# --------------------------------------------------------------------------- ONNX


def export_onnx(model_dir: str | os.PathLike, onnx_path: str | os.PathLike | None = None, *, opset: int = 13, overwrite: bool = False) -> Path:
    """Converts a PIR inference model directory to ONNX with Paddle2ONNX (written atomically).

    Paddle2ONNX 2.1 crashes the process on legacy ``.pdmodel`` input, so a legacy
    directory is refused: import it and export it again as PIR.
    """
    files = locate_inference_model(model_dir)
    if files.format != "pir":
        raise InferenceModelError(f"{files.program}: Paddle2ONNX 2.1 cannot convert legacy programs; re-export as PIR first (python -m interop export DIR OUT)")
    scan_params_file(files.params)
    target = Path(onnx_path) if onnx_path is not None else files.directory / f"{MODEL_PREFIX}.onnx"
    if target.exists() and not overwrite:
        raise InferenceModelError(f"{target}: already exists; refusing to overwrite")
    paddle2onnx = require_paddle2onnx()

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        paddle2onnx.export(str(files.program), str(files.params), tmp, opset_version=opset, optimize_tool="None", verbose=False)
        if os.path.getsize(tmp) == 0:
            raise InferenceModelError(f"{files.program}: Paddle2ONNX produced no model")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
