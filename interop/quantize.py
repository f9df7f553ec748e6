"""Static int8 quantization of an ONNX model for CPUs, with ONNX Runtime's own tools.

:func:`quantize_onnx` takes an ``.onnx`` classifier (from ``interop onnx --from jax`` or from
Paddle2ONNX), calibrates it on a folder of images the user names, each put through the model's
eval transform as our predictors do, and writes an int8 model with
``onnxruntime.quantization.quantize_static``. The choices (docs/deployment.md has the
measurements behind each):

* **QDQ format** (``QuantizeLinear``/``DequantizeLinear`` pairs around float ops), which ONNX
  Runtime's CPU provider fuses into its int8 kernels; the file stays a plain ONNX graph.
* **uint8 activations, int8 weights per output channel** (symmetric), MinMax calibration,
  ``reduce_range`` off: ONNX Runtime's guidance for x86 CPUs with VNNI
  (``QuantizeSettings(reduce_range=True)`` for CPUs without it).
* **Only the matrix products are quantized** (:data:`QUANTIZED_OP_TYPES`): MatMul, Gemm and Conv
  (the patch embedding), attention's activation-by-activation MatMuls included (Paddle2ONNX's
  graph; jax2onnx writes them as ``Einsum``, which stays float). LayerNorm, Softmax, GELU and the
  residual additions stay float: quantizing ``Add`` measurably breaks top-1 agreement. The
  products' outputs stay float too (not re-quantized): ONNX Runtime then runs one
  ``MatMulIntegerToFloat`` per weight product instead of ``QLinearMatMul`` + ``DequantizeLinear``
  (the patch embedding's Conv then keeps int8-stored weights but runs in float).

The file keeps the source's ``vitjax.*`` metadata (model, output kind, eval transform) and
gains ``vitjax.quantization``, a JSON record of how it was made, so ``interop serve``, the
deploy predictors and ``interop parity`` take it like any other ONNX file. For a Paddle2ONNX
file, which has no metadata, ``model_name`` names the model (its eval transform, class count and
output kind are then recorded in the int8 file).

Every failure is one line naming the file and the cause (:class:`QuantizationError`), checked
before any work where possible; the output is written beside the target and renamed into
place, so a failure leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from interop.errors import InferenceModelError, first_line
from vitjax.files import atomic_file

QUANTIZED_OP_TYPES = ("MatMul", "Gemm", "Conv")
DEFAULT_MAX_IMAGES = 128
CALIBRATION_BATCH = 4
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


class QuantizationError(InferenceModelError):
    """A model, calibration folder or output path that int8 quantization cannot use (one line)."""


@dataclasses.dataclass(frozen=True)
class QuantizeSettings:
    """What :func:`quantize_onnx` passes to ``quantize_static`` (defaults: the shipped choices)."""

    op_types: tuple[str, ...] = QUANTIZED_OP_TYPES
    attention_float: bool = False  # True: MatMuls of two activations (attention's) stay float
    per_channel: bool = True
    activations: str = "uint8"  # or "int8"
    reduce_range: bool = False
    quant_format: str = "QDQ"  # or "QOperator"
    calibrate_method: str = "MinMax"  # or "Entropy", "Percentile"
    nodes_to_exclude: tuple[str, ...] = ()
    preprocess: bool = True  # ONNX Runtime's quant_pre_process first
    float_outputs: bool = True  # the products' outputs stay float (MatMulIntegerToFloat), not re-quantized


def calibration_images(folder: str | os.PathLike, max_images: int | None = DEFAULT_MAX_IMAGES) -> list[Path]:
    """The image files directly in ``folder`` or below it (sorted; the first ``max_images``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QuantizationError(f"{folder}: calibration folder not found")
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath) / n
            for n in filenames
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES
        ]
    found.sort()
    if not found:
        raise QuantizationError(
            f"{folder}: calibration folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))}, at any depth)"
        )
    return found[:max_images] if max_images else found


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        """Batches of calibration images, NCHW float32 through the model's eval transform, read
        one stride at a time (``set_range``), so the calibrator holds one batch's tensors at once."""

        def __init__(self, paths: Sequence[Path], transform, input_name: str, batch: int):
            self._chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
            self._transform, self._input_name = transform, input_name
            self._pending: Iterator[Sequence[Path]] = iter(self._chunks)

        def __len__(self) -> int:
            return len(self._chunks)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._pending = iter(self._chunks[start_index:end_index])

        def get_next(self):
            chunk = next(self._pending, None)
            return None if chunk is None else {self._input_name: _load_batch(chunk, self._transform)}

    return ImageReader


def _load_batch(paths: Sequence[Path], transform) -> np.ndarray:
    from vitjax.data.transforms import ImageError, load_rgb, preprocess_eval

    images = []
    for path in paths:
        try:
            images.append(preprocess_eval(load_rgb(path), transform).transpose(2, 0, 1))
        except ImageError as e:
            raise QuantizationError(str(e)) from None
        except ValueError as e:  # e.g. smaller than the crop
            raise QuantizationError(f"{path}: {first_line(e)}") from None
    return np.ascontiguousarray(np.stack(images).astype(np.float32))


def _load_model(path: Path):
    import onnx

    if not path.is_file():
        raise QuantizationError(f"{path}: no such ONNX model")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError and friends: a file that is not an ONNX protobuf
        raise QuantizationError(f"{path}: not an ONNX model ({type(e).__name__}: {first_line(e)})") from None
    if not model.graph.node or len(model.graph.input) == 0:
        raise QuantizationError(f"{path}: not an ONNX model (no graph)")
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise QuantizationError(f"{path}: expected one image input, found {len(inputs)}")
    dims = [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or not isinstance(dims[2], int) or dims[2] != dims[3]:
        raise QuantizationError(f"{path}: input {inputs[0].name} has shape {dims}, expected [N, 3, S, S]")
    return model, inputs[0].name, int(dims[2])


def _facts(model, path: Path, img_size: int, model_name: str | None) -> dict[str, str]:
    """The ``vitjax.*`` metadata the int8 file carries: the source's own, or built from ``model_name``."""
    from interop.onnx_from_jax import METADATA_KEYS

    meta = {p.key: p.value for p in model.metadata_props if p.key in METADATA_KEYS}
    if "vitjax.model" in meta and model_name not in (None, meta["vitjax.model"]):
        raise QuantizationError(f"{path}: holds {meta['vitjax.model']}, but --model says {model_name}")
    if "vitjax.model" in meta:
        return meta
    if model_name is None:
        raise QuantizationError(
            f"{path}: no vitjax metadata (not written by `interop onnx --from jax`); name the model with --model"
        )
    from vitjax.models.registry import get_spec, list_models

    if model_name not in list_models(include_test=True):
        raise QuantizationError(f"{path}: unknown model {model_name!r}")
    t = get_spec(model_name).eval_transform
    if img_size != t.crop_size:
        t = dataclasses.replace(t, resize_short=round(t.resize_short * img_size / t.crop_size), crop_size=img_size)
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    softmax = model.graph.node[-1].op_type == "Softmax" or any(
        n.op_type == "Softmax" and model.graph.output[0].name in n.output for n in model.graph.node
    )
    return {
        "vitjax.model": model_name,
        "vitjax.output": "probabilities" if softmax else "logits",
        "vitjax.img_size": str(img_size),
        "vitjax.num_classes": str(out_dims[-1].dim_value) if out_dims and out_dims[-1].dim_value else "",
        "vitjax.eval_transform": json.dumps(dataclasses.asdict(t)),
        "vitjax.batch": "batched",
    }


def _transform(meta: dict[str, str]):
    from vitjax.models.registry import EvalTransform

    f = json.loads(meta["vitjax.eval_transform"])
    return EvalTransform(
        int(f["resize_short"]),
        int(f["crop_size"]),
        f.get("interpolation", "bicubic"),
        tuple(f["mean"]),
        tuple(f["std"]),
    )


def quantize_onnx(
    model_path: str | os.PathLike,
    calibration: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    model_name: str | None = None,
    max_images: int | None = DEFAULT_MAX_IMAGES,
    settings: QuantizeSettings = QuantizeSettings(),
    overwrite: bool = False,
) -> Path:
    """Writes the int8 model (see the module docstring) to ``out_path`` and returns its path.

    ``calibration``: a folder of images (any depth; the first ``max_images`` in sorted order).
    ``model_name``: needed for a file without ``vitjax.*`` metadata (Paddle2ONNX's). Raises
    :class:`QuantizationError` (one line naming the file) for a missing or non-ONNX model, a
    calibration folder without images or with an undecodable one, an output whose directory is
    missing or which exists without ``overwrite``; nothing is written then.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, out = Path(model_path), Path(out_path)
    if out.exists() and not overwrite:
        raise QuantizationError(f"{out}: already exists; refusing to overwrite (pass overwrite=True / --overwrite)")
    if not out.absolute().parent.is_dir():
        raise QuantizationError(f"{out}: output directory {out.absolute().parent} does not exist")
    if max_images is not None and max_images < 1:
        raise QuantizationError(f"{calibration}: --max-images must be at least 1, not {max_images}")
    model, input_name, img_size = _load_model(src)
    if (model.metadata_props and any(p.key == "vitjax.quantization" for p in model.metadata_props)) or any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearMatMul") for n in model.graph.node
    ):
        raise QuantizationError(f"{src}: already quantized; quantize the float model")
    meta = _facts(model, src, img_size, model_name)
    paths = calibration_images(calibration, max_images)
    transform = _transform(meta)
    reader = _reader_class()(paths, transform, input_name, CALIBRATION_BATCH)
    activation = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[settings.activations]
    record = {
        "format": settings.quant_format,
        "weights": "int8 symmetric, " + ("per output channel" if settings.per_channel else "per tensor"),
        "activations": settings.activations,
        "reduce_range": settings.reduce_range,
        "calibration": f"{settings.calibrate_method} on {len(paths)} images from {Path(calibration).name}",
        "quantized_op_types": list(settings.op_types),
        "attention_matmuls_float": settings.attention_float,
        "outputs": "float" if settings.float_outputs else "int8",
        "nodes_kept_float": list(settings.nodes_to_exclude),
        "source": src.name,
    }
    with atomic_file(out) as tmp, tempfile.TemporaryDirectory(prefix="vitjax-quantize-") as work:
        try:
            prepared = _prepare(model, Path(work)) if settings.preprocess else model
            exclude = list(settings.nodes_to_exclude)
            if settings.attention_float:
                exclude += _activation_matmuls(onnx.load(str(prepared)) if isinstance(prepared, Path) else prepared)
            quantize_static(
                prepared,
                str(tmp),
                reader,
                quant_format=getattr(QuantFormat, settings.quant_format),
                op_types_to_quantize=list(settings.op_types),
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude or None,
                calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
                extra_options={
                    "OpTypesToExcludeOutputQuantization": list(settings.op_types) if settings.float_outputs else [],
                    "CalibStridedMinMax": 1,  # ranges merged batch by batch: the calibrator holds one batch
                },
            )
        except QuantizationError:
            raise
        except Exception as e:
            raise QuantizationError(f"{src}: quantization failed ({type(e).__name__}: {first_line(e)})") from None
        quantized = onnx.load(str(tmp))
        if not any(n.op_type in ("DequantizeLinear", "QLinearMatMul", "QGemm") for n in quantized.graph.node):
            raise QuantizationError(
                f"{src}: nothing to quantize: no MatMul, Gemm or Conv outside a loop (ONNX Runtime's static "
                f"quantizer does not enter Loop bodies; jax2onnx 0.11 writes TNT as one: quantize Paddle2ONNX's file)"
            )
        onnx.helper.set_model_props(quantized, {**meta, "vitjax.quantization": json.dumps(record)})
        onnx.save(quantized, str(tmp))
        _check_loads(tmp, out)
    return out


def _prepare(model, work: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (``quant_pre_process``): ONNX shape inference and its
    basic graph optimizations: constant folding turns Paddle2ONNX's ``Identity``-fed weights into
    initializers the quantizer can see (without it, its weights stay float and are quantized at every
    call). Its symbolic shape inference cannot follow either exporter's graph, so it is skipped."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, prepared = work / "float.onnx", work / "prepared.onnx"
    onnx.save(model, str(src))
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    return prepared


def _activation_matmuls(model) -> list[str]:
    """Names of the MatMuls whose operands are both computed (attention's q·k and weights·v)."""
    constants = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not constants & set(n.input[:2])]


def _check_loads(tmp: Path, out: Path) -> None:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        onnxruntime.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise QuantizationError(f"{out}: ONNX Runtime cannot load the quantized model ({first_line(e)})") from None


def quantization_record(path: str | os.PathLike) -> dict | None:
    """The ``vitjax.quantization`` record of an ONNX file (None for a float model)."""
    raw = dict(_all_metadata(path)).get("vitjax.quantization")
    return json.loads(raw) if raw else None


def _all_metadata(path) -> list[tuple[str, str]]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise QuantizationError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
    return [(p.key, p.value) for p in model.metadata_props]


def op_counts(path: str | os.PathLike) -> dict[str, int]:
    """Op types of an ONNX file's main graph and how often each occurs."""
    import collections

    import onnx

    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node).most_common())


__all__ = [
    "QUANTIZED_OP_TYPES",
    "QuantizationError",
    "QuantizeSettings",
    "calibration_images",
    "op_counts",
    "quantization_record",
    "quantize_onnx",
]
