"""Serving the two Paddle-free files: ONNX written from the JAX model, and a ``jax.export`` artifact.

:func:`portable_predictor` turns such a file into what :func:`interop.serving.load_served_model`
needs (predictor, model name, output kind, eval transform), reading the model's identity from
the file itself: the ONNX file's ``vitjax.*`` metadata, or the artifact's JSON sidecar.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from interop.errors import InferenceModelError
from interop.jax_artifact import ARTIFACT_SUFFIX

SUFFIXES = (".onnx", ARTIFACT_SUFFIX)
ONNX_BACKENDS = ("onnxruntime-jax", "onnxruntime")


def is_portable_file(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix in SUFFIXES


def portable_predictor(path: str | os.PathLike, backend: str, *, threads: int = 1, max_batch: int | None = None):
    """``(predictor, model_name, outputs_probabilities, eval_transform)`` for a ``.onnx`` or
    ``.jaxexport`` file; ``backend`` must be one that runs it (``onnxruntime-jax``/``onnxruntime``,
    or ``jax-export``), else a one-line :class:`InferenceModelError`."""
    from interop.deploy import create_predictor

    path = Path(path)
    if path.suffix == ".onnx":
        if backend not in ONNX_BACKENDS:
            raise InferenceModelError(f"{path}: an ONNX file runs on --backend onnxruntime-jax, not {backend}")
        predictor = create_predictor(backend, onnx_path=path, threads=threads)
        meta = predictor.metadata
        if "vitjax.model" not in meta:
            raise InferenceModelError(
                f"{path}: no vitjax metadata (not written by `interop onnx --from jax`); serve its inference directory"
            )
        transform = json.loads(meta["vitjax.eval_transform"])
        return predictor, meta["vitjax.model"], meta["vitjax.output"] == "probabilities", _transform(transform)
    if backend != "jax-export":
        raise InferenceModelError(f"{path}: a {ARTIFACT_SUFFIX} artifact runs on --backend jax-export, not {backend}")
    # No limit of the server's own: it pads batches to powers of two (one compile each), which may
    # exceed --max-batch-size; the batcher bounds the batch, the file's own limit (if any) still holds.
    predictor = create_predictor("jax-export", artifact_path=path, softmax=False, max_batch=None)
    return predictor, predictor.model_name, False, _transform(predictor.metadata["eval_transform"])


def _transform(fields: dict):
    from vitjax.eval_transform import EvalTransform

    return EvalTransform(
        int(fields["resize_short"]),
        int(fields["crop_size"]),
        fields.get("interpolation", "bicubic"),
        tuple(fields["mean"]),
        tuple(fields["std"]),
    )
