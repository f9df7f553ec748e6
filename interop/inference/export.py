"""Flax variables -> a Paddle inference model directory that PaddleClas's deploy code runs.

The variables go through the Paddle mirror (:mod:`interop.paddle_models`), wrapped as
PaddleClas's ``ExportModel`` wraps a model (a softmax appended unless asked for logits),
and are saved with file prefix ``inference`` and one NCHW float32 input ``x`` with a
dynamic batch size.

* ``format="pir"`` writes ``inference.json`` + ``inference.pdiparams`` (Paddle 3), through
  ``paddle.jit.to_static`` and ``paddle.jit.save``.
* ``format="legacy"`` writes ``inference.pdmodel`` + ``inference.pdiparams`` (Paddle 2.x).
  Paddle 3.3's ``to_static`` cannot build the legacy program for these models, so it is
  built in Paddle's old static-graph mode by calling the mirror directly; two functions the
  mirror uses (``paddle.matmul`` and ``F.gelu``) have no old-IR implementation in Paddle 3.3
  and are given one for the duration of the build (:func:`_old_ir_shims`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from interop._paddle import require_paddle
from interop.errors import InferenceModelError
from interop.inference.files import INPUT_NAME, MODEL_PREFIX, PROGRAM_FILES, Format, locate_inference_model
from vitjax.files import atomic_directory
from vitjax.models.registry import get_spec
from vitjax.weights.convert import (
    Variables,
    guess_model,
    infer_num_classes,
    state_dict_to_variables,
    variables_to_state_dict,
)
from vitjax.weights.pdparams import read_pdparams


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
    from vitjax.training.checkpoints import load_variables

    return model_name, load_variables(path)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuses an existing ``out_dir`` unless ``overwrite``, and a missing parent directory."""
    out_dir = out_dir.absolute()
    if out_dir.exists() and not overwrite:
        raise InferenceModelError(
            f"{out_dir}: already exists; refusing to overwrite (pass overwrite=True / --overwrite)"
        )
    if not out_dir.parent.is_dir():
        raise InferenceModelError(f"{out_dir}: parent directory {out_dir.parent} does not exist")


def _mirror_with_weights(state: Mapping[str, np.ndarray], model_name: str, img_size: int):
    """The Paddle mirror of ``model_name`` holding ``state``."""
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
    """Writes ``prefix.json`` + ``prefix.pdiparams`` with ``paddle.jit.save``."""
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
    """Writes ``prefix.pdmodel`` + ``prefix.pdiparams``, building the program in old static-graph mode."""
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
    _check_target(Path(out_dir), overwrite)
    with atomic_directory(out_dir) as tmp:
        save = _save_pir if format == "pir" else _save_legacy
        save(state, model_name, img_size, softmax, tmp / MODEL_PREFIX)
        written = locate_inference_model(tmp)
        if written.format != format:  # a guard on Paddle's behaviour, not on user input
            raise InferenceModelError(f"{out_dir}: Paddle wrote {written.program.name}, not the {format} format")
    return Path(out_dir)
