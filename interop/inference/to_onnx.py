"""A PIR inference model directory -> ONNX, with Paddle2ONNX."""

from __future__ import annotations

import os
from pathlib import Path

from interop._paddle import require_paddle2onnx
from interop.errors import InferenceModelError
from interop.inference.files import MODEL_PREFIX, locate_inference_model
from interop.inference.pdiparams import scan_params_file
from interop.inference.program_check import check_program_file
from vitjax.files import atomic_file


def export_onnx(
    model_dir: str | os.PathLike,
    onnx_path: str | os.PathLike | None = None,
    *,
    opset: int = 13,
    overwrite: bool = False,
) -> Path:
    """Converts a PIR inference model directory to ONNX with Paddle2ONNX (written atomically).

    The default target is ``inference.onnx`` in ``model_dir`` (where PaddleClas's deploy code
    looks for it). Paddle2ONNX 2.1 crashes the process on legacy ``.pdmodel`` input, so a
    legacy directory is refused: import it and export it again as PIR.
    """
    files = locate_inference_model(model_dir)
    if files.format != "pir":
        raise InferenceModelError(
            f"{files.program}: Paddle2ONNX 2.1 cannot convert legacy programs; re-export as PIR first (python -m interop export DIR OUT)"
        )
    check_program_file(files.program)
    scan_params_file(files.params)
    target = Path(onnx_path) if onnx_path is not None else files.directory / f"{MODEL_PREFIX}.onnx"
    if target.exists() and not overwrite:
        raise InferenceModelError(f"{target}: already exists; refusing to overwrite")
    paddle2onnx = require_paddle2onnx()

    with atomic_file(target) as tmp:
        paddle2onnx.export(
            str(files.program), str(files.params), str(tmp), opset_version=opset, optimize_tool="None", verbose=False
        )
        if tmp.stat().st_size == 0:
            raise InferenceModelError(f"{files.program}: Paddle2ONNX produced no model")
    return target
