"""A Paddle inference model directory -> the registered model and Flax variables it computes.

Candidates come from :mod:`interop.inference.keys` (by ``.info`` names, or by creation
order against every registered model); each candidate is then checked by running the
inference program and our Flax model on the same random batch, so an import either
reproduces the file's outputs or fails loudly.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from interop.errors import InferenceModelError, LayerOrderMismatch
from interop.inference.files import Format, locate_inference_model
from interop.inference.keys import structured_state_by_order, structured_state_from_info
from interop.inference.program import LoadedProgram, load_program
from vitjax.models.registry import create_model, list_models
from vitjax.weights.convert import Variables, guess_model, infer_num_classes, state_dict_to_variables
from vitjax.weights.errors import WeightsError

IMPORT_ATOL = 1e-4  # fp32 bar for "the imported model computes what the file computes"


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
        state = structured_state_from_info(loaded.parameters, loaded.files.info)
        name = model_name or guess_model(state, source=source)
        return {name: state}
    names = [model_name] if model_name else list_models(include_test=True)
    fits, reasons = {}, {}
    for name in names:
        try:
            fits[name] = structured_state_by_order(loaded.parameters, name, img_size)
        except LayerOrderMismatch as e:
            reasons[name] = str(e)
    if not fits:
        n = len(loaded.parameters)
        if model_name:
            raise InferenceModelError(f"{source}: its {n} parameters do not fit {model_name}: {reasons[model_name]}")
        raise InferenceModelError(
            f"{source}: its {n} parameters fit no registered DeiT/TNT model (unknown architecture)"
        )
    return fits


def _check_outputs(
    loaded: LoadedProgram, name: str, variables: Variables, img_size: int, num_classes: int, seed: int = 0
):
    """Runs the file's program and our model on one random batch: ``(softmax?, max |diff|)``."""
    images = np.random.RandomState(seed).standard_normal((2, 3, img_size, img_size)).astype(np.float32)
    theirs = loaded.run(images)
    model = create_model(name, num_classes=num_classes, img_size=img_size)
    logits = np.asarray(jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1)))
    if theirs.shape != logits.shape:
        return None, math.inf
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    diffs = {False: float(np.abs(theirs - logits).max()), True: float(np.abs(theirs - probs).max())}
    softmax = (
        loaded.output_op == "softmax"
        if diffs[True] <= IMPORT_ATOL and diffs[False] <= IMPORT_ATOL
        else diffs[True] < diffs[False]
    )
    return softmax, diffs[softmax]


def read_inference_model(
    model_dir: str | os.PathLike, model_name: str | None = None, *, verify: bool = True
) -> ImportedModel:
    """Recovers the model and Flax variables an inference model directory computes.

    Works on PaddleClas's exports and ours, PIR or legacy, with or without softmax,
    with or without ``.pdiparams.info``. With ``verify`` (the default) the result is
    run against the file's own program; a mismatch above 1e-4 is an error.
    """
    files = locate_inference_model(model_dir)
    loaded = load_program(files)
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
        except WeightsError as e:
            failures.append(str(e))
            continue
        if not verify:
            results.append(
                ImportedModel(name, variables, loaded.output_op == "softmax", files.format, img_size, num_classes, None)
            )
            continue
        softmax, diff = _check_outputs(loaded, name, variables, img_size, num_classes)
        if diff <= IMPORT_ATOL:
            results.append(ImportedModel(name, variables, bool(softmax), files.format, img_size, num_classes, diff))
        else:
            failures.append(f"{name}: outputs differ from the file's by {diff:.3g}")
    if len(results) == 1:
        return results[0]
    if not results:
        raise InferenceModelError(
            f"{files.directory}: no registered model reproduces this graph ({'; '.join(failures)})"
        )
    raise InferenceModelError(
        f"{files.directory}: fits several models ({', '.join(r.model_name for r in results)}); pass the model name"
    )


def load_inference_model(
    model_dir: str | os.PathLike, model_name: str | None = None, *, verify: bool = True
) -> Variables:
    """Flax variables for the model a Paddle inference model directory holds (see :func:`read_inference_model`)."""
    return read_inference_model(model_dir, model_name, verify=verify).variables
