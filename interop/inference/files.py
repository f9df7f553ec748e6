"""Where an inference model directory keeps its files, and the names PaddleClas gives them.

PaddleClas's ``tools/export_model.py`` writes ``save_inference_dir/inference.*``: a program
(``inference.json``, Paddle 3's PIR, or ``inference.pdmodel``, Paddle 2.x's legacy
``ProgramDesc``), the parameters (``inference.pdiparams``) and, from Paddle 2.x's
``jit.save``, the parameters' structured names (``inference.pdiparams.info``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from interop.errors import InferenceModelError

Format = Literal["pir", "legacy"]
MODEL_PREFIX = "inference"  # PaddleClas: save_inference_dir/inference.*
INPUT_NAME = "x"  # what Paddle names the unnamed InputSpec of forward(self, x)
PROGRAM_FILES: dict[str, str] = {"pir": f"{MODEL_PREFIX}.json", "legacy": f"{MODEL_PREFIX}.pdmodel"}
PARAMS_FILE = f"{MODEL_PREFIX}.pdiparams"
INFO_FILE = f"{MODEL_PREFIX}.pdiparams.info"


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
