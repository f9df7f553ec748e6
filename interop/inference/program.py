"""An inference model read through Paddle's static executor: its parameters, signature, and a runner."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np

from interop._paddle import require_paddle
from interop.errors import InferenceModelError, first_line
from interop.inference.files import MODEL_PREFIX, Format, InferenceModelFiles
from interop.inference.pdiparams import scan_params_file
from interop.inference.program_check import check_program_file


@dataclasses.dataclass(frozen=True)
class LoadedProgram:
    """What an inference model directory holds, read through Paddle."""

    files: InferenceModelFiles
    parameters: dict[str, np.ndarray]  # internal name -> array
    input_shape: tuple[int, ...]
    output_op: str  # the op computing the output, e.g. "softmax"
    run: Any  # images (NCHW float32) -> output array


def load_program(files: InferenceModelFiles) -> LoadedProgram:
    """Loads the program and parameters with Paddle's static executor (either format).

    The program's and the parameters file's framing are checked first (:func:`check_program_file`,
    :func:`scan_params_file`), and the parameters must
    hold exactly the parameters the program declares; the program must have one input
    and one output.
    """
    paddle = require_paddle()
    from paddle import pir_utils

    check_program_file(files.program)
    records = scan_params_file(files.params)
    guard = contextlib.nullcontext() if files.format == "pir" else pir_utils.OldIrGuard()
    scope = paddle.static.Scope()
    with guard:
        paddle.enable_static()
        try:
            executor = paddle.static.Executor(paddle.CPUPlace())
            with paddle.static.scope_guard(scope):
                try:
                    program, feeds, fetches = paddle.static.load_inference_model(
                        str(files.directory / MODEL_PREFIX), executor
                    )
                except Exception as e:  # Paddle raises many types; all mean "not loadable"
                    raise InferenceModelError(
                        f"{files.program}: Paddle cannot load this inference model ({first_line(e)})"
                    ) from None
            if len(feeds) != 1 or len(fetches) != 1:
                raise InferenceModelError(
                    f"{files.program}: {len(feeds)} inputs and {len(fetches)} outputs; an image classifier has one of each"
                )
            names = _persistable_names(program, files.format)
            if len(names) != len(records):
                raise InferenceModelError(
                    f"{files.params}: holds {len(records)} tensors but {files.program.name} declares {len(names)} parameters"
                )
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
    """The program's parameter names, in the order the parameters file stores them."""
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
