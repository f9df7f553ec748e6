"""One predictor interface over every way we run a classifier.

``predictor.predict(images)`` takes an NCHW float32 batch (PaddleClas's deploy
layout) and returns what the model outputs: probabilities for an exported model
with softmax (the default), logits otherwise. Backends:

=================  ==========================================================
``jax``            our Flax model under ``jax.jit`` (the reference)
``paddle-cpu``     Paddle Inference on CPU (oneDNN on or off, thread count)
``paddle-gpu``     Paddle Inference on a CUDA GPU
``paddle-trt-fp32`` / ``paddle-trt-fp16``
                   TensorRT through Paddle Inference, dynamic batch shapes
``onnxruntime``    ONNX Runtime (CPU) on the Paddle2ONNX export
``onnxruntime-jax`` ONNX Runtime (CPU) on the ONNX jax2onnx writes from our JAX
                   model (:mod:`interop.onnx_from_jax`; no Paddle anywhere)
``jax-export``     a ``jax.export`` artifact (:mod:`interop.jax_artifact`): serialized
                   StableHLO run by JAX alone, no model code
=================  ==========================================================

A backend this machine cannot run raises :class:`BackendUnavailable` saying why;
nothing ever falls back to another backend, so a report never claims a backend
was checked when it was not. Paddle's predictor is configured as PaddleClas's
``deploy/utils/predictor.py`` configures it (same switches, same meaning).
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any

import numpy as np

from interop._paddle import require_paddle
from interop.errors import BackendUnavailable, InferenceModelError, InputShapeError, first_line
from interop.inference import locate_inference_model
from interop.inference.pdiparams import scan_params_file
from interop.inference.program_check import check_program_file
from interop.tensorrt import tensorrt_settings

BACKENDS = (
    "jax",
    "paddle-cpu",
    "paddle-gpu",
    "paddle-trt-fp32",
    "paddle-trt-fp16",
    "onnxruntime",
    "onnxruntime-jax",
    "jax-export",
)


class Predictor(abc.ABC):
    """Runs one model on NCHW float32 batches; subclasses differ only in the engine."""

    backend: str
    img_size: int
    max_batch: int | None = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._run(self._checked(images))

    def _checked(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        want = f"[N, 3, {self.img_size}, {self.img_size}]"
        if images.ndim != 4 or images.shape[1:] != (3, self.img_size, self.img_size) or images.shape[0] < 1:
            raise InputShapeError(
                f"{self.backend}: input of shape {list(images.shape)} does not fit the model input {want} (NCHW)"
            )
        if not np.issubdtype(images.dtype, np.floating):
            raise InputShapeError(
                f"{self.backend}: input of dtype {images.dtype}; the model takes float32 (normalized images)"
            )
        if self.max_batch is not None and images.shape[0] > self.max_batch:
            raise InputShapeError(
                f"{self.backend}: batch of {images.shape[0]} exceeds the engine's maximum batch {self.max_batch}"
            )
        return np.ascontiguousarray(images, dtype=np.float32)

    @abc.abstractmethod
    def _run(self, images: np.ndarray) -> np.ndarray: ...


class JaxPredictor(Predictor):
    """Our Flax model, compiled once per batch size; NCHW in, like the exported models."""

    backend = "jax"

    def __init__(
        self,
        variables,
        model_name: str,
        *,
        softmax: bool = True,
        num_classes: int | None = None,
        img_size: int | None = None,
        dtype: str = "float32",
        pin_threads: bool = True,
        matmul: str = "auto",
    ):
        """``dtype`` is the computation dtype (``"bfloat16"``: bf16 compute on float32
        parameters); outputs are float32 whatever it is.

        ``pin_threads``: on the CPU backend (Linux), pin XLA's worker threads one per core at the
        first call (:mod:`vitjax.cpu_threads`: batch-1 latency after an idle gap 33 -> 22 ms
        on DeiT-tiny, 2 cores); process-wide, so pass ``False`` when this process also trains
        or shares its cores with other busy processes. ``pinned_threads`` says what was pinned.

        ``matmul``: the dense and attention matmuls' kernel, as the training config's
        ``model.matmul``: ``"auto"`` runs oneDNN's (the ``cpu-kernels`` extra) on a CPU where it
        builds and XLA's elsewhere; ``self.matmul`` says which. On DeiT-tiny at batch 1, 2 cores:
        17 against 21 ms (``python -m benchmarks.run``, engines ``jax`` and ``jax-xla``)."""
        import jax
        import jax.numpy as jnp

        from vitjax.models.registry import create_model, get_spec
        from vitjax.training.model_init import resolve_matmul
        from vitjax.weights.convert import infer_num_classes, variables_to_state_dict

        state = variables_to_state_dict(variables, model_name)
        num_classes = infer_num_classes(state) if num_classes is None else num_classes
        self.img_size = int(img_size or get_spec(model_name).img_size)
        self.dtype = str(dtype)
        self.matmul = resolve_matmul(matmul, num_devices=1, dtype=self.dtype)  # jit without shardings: one device
        model = create_model(
            model_name, num_classes=num_classes, img_size=self.img_size, dtype=jnp.dtype(self.dtype), matmul=self.matmul
        )

        def forward(params, images_nchw):
            logits = model.apply(params, images_nchw.transpose(0, 2, 3, 1)).astype(jnp.float32)
            return jax.nn.softmax(logits, axis=-1) if softmax else logits

        self._forward, self._variables = jax.jit(forward), variables
        self._pin_pending = bool(pin_threads) and jax.default_backend() == "cpu"
        self.pinned_threads: dict[int, int] = {}

    def _run(self, images: np.ndarray) -> np.ndarray:
        if self._pin_pending:  # once, when the model first runs
            from vitjax.cpu_threads import pin_xla_worker_threads

            self._pin_pending = False
            self.pinned_threads = pin_xla_worker_threads()
        return np.asarray(self._forward(self._variables, images))


class JaxExportPredictor(Predictor):
    """A ``jax.export`` artifact (:func:`interop.jax_artifact.load_jax_artifact`): NCHW in like the
    other backends (transposed to the artifact's NHWC), logits out, probabilities with ``softmax``.
    ``max_batch``: a limit of our own on top of the one the file may carry; the smaller wins."""

    backend = "jax-export"

    def __init__(self, artifact_path: str | os.PathLike, *, softmax: bool = False, max_batch: int | None = None):
        from interop.jax_artifact import ArtifactError, load_jax_artifact

        try:
            self._artifact = load_jax_artifact(artifact_path)
            self._artifact.check_platform()
        except ArtifactError as e:
            raise InferenceModelError(str(e)) from None
        self.metadata, self.model_name = self._artifact.metadata, self._artifact.model_name
        self.img_size, self.softmax = self._artifact.img_size, bool(softmax)
        limits = [b for b in (max_batch, self._artifact.max_batch) if b is not None]
        self.max_batch = min(limits) if limits else None

    def predict(self, images: np.ndarray) -> np.ndarray:
        try:
            return super().predict(images)
        except InputShapeError as e:  # name the file, as the artifact's own errors do
            raise InputShapeError(f"{self._artifact.path}: {e}") from None

    def _run(self, images: np.ndarray) -> np.ndarray:
        logits = self._artifact(np.ascontiguousarray(images.transpose(0, 2, 3, 1)))
        if not self.softmax:
            return logits
        shifted = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(shifted.astype(np.float64))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def gpu_status() -> tuple[bool, str]:
    """Whether Paddle can use a CUDA GPU here, and if not, why."""
    paddle = require_paddle()

    if not paddle.device.is_compiled_with_cuda():
        return False, f"this paddlepaddle {paddle.__version__} build has no CUDA support (install paddlepaddle-gpu)"
    if paddle.device.cuda.device_count() < 1:
        return False, "no CUDA GPU is visible"
    return True, "CUDA GPU present"


def tensorrt_status() -> tuple[bool, str]:
    """Whether Paddle Inference was built with TensorRT and a GPU is present."""
    ok, reason = gpu_status()
    if not ok:
        return ok, reason
    require_paddle()
    from paddle import inference

    if tuple(inference.get_trt_compile_version()) == (0, 0, 0):
        return False, "this Paddle Inference build has no TensorRT support"
    return True, "TensorRT available"


def onnxruntime_status() -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    return True, "onnxruntime installed"


def backend_status(backend: str) -> tuple[bool, str]:
    """``(available, reason)`` for a backend name from :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend in ("jax", "jax-export"):
        return True, "always available"
    if backend in ("onnxruntime", "onnxruntime-jax"):
        return onnxruntime_status()
    try:
        require_paddle()
    except ImportError:
        return False, "paddlepaddle is not installed (pip install paddlepaddle)"
    if backend == "paddle-cpu":
        return True, "Paddle Inference CPU"
    if backend == "paddle-gpu":
        return gpu_status()
    return tensorrt_status()


class PaddleInferencePredictor(Predictor):
    """Paddle Inference on an exported model directory, configured like PaddleClas's deploy predictor.

    Program and parameter files are passed explicitly: Paddle 3's ``Config(dir, prefix)``
    only looks for ``inference.json``, and legacy ``.pdmodel`` directories must run too.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        device: str = "cpu",
        mkldnn: bool = True,
        threads: int = 1,
        tensorrt: str | None = None,
        max_batch: int = 8,
        gpu_mem_mb: int = 500,
        ir_optim: bool = True,
    ):
        if tensorrt not in (None, "fp32", "fp16"):
            raise ValueError(f"tensorrt precision {tensorrt!r}; use 'fp32' or 'fp16'")
        self.backend = "paddle-cpu" if device == "cpu" else f"paddle-trt-{tensorrt}" if tensorrt else "paddle-gpu"
        ok, reason = backend_status(self.backend)
        if not ok:
            raise BackendUnavailable(f"{self.backend}: unavailable: {reason}")
        require_paddle()
        from paddle import inference

        files = locate_inference_model(model_dir)
        check_program_file(files.program)  # Paddle's own parsers abort on some damaged files
        scan_params_file(files.params)
        config = inference.Config(str(files.program), str(files.params))
        if device == "cpu":
            config.disable_gpu()
            if mkldnn:
                config.set_mkldnn_cache_capacity(10)  # one cached kernel set per input shape, as PaddleClas
                config.enable_mkldnn()
            else:
                config.disable_mkldnn()
            config.set_cpu_math_library_num_threads(int(threads))
        else:
            config.enable_use_gpu(int(gpu_mem_mb), 0)
        config.disable_glog_info()
        config.switch_ir_optim(ir_optim)
        self.img_size = _declared_img_size(files)
        self.tensorrt = tensorrt_settings(model_dir, tensorrt, self.img_size, max_batch) if tensorrt else None
        if self.tensorrt:
            self.max_batch = self.tensorrt.max_batch
            self.tensorrt.apply(config, inference)
        if files.format == "legacy":
            # PaddleClas enables memory optimisation; Paddle Inference 3.3.1 fails to create a
            # predictor for any PIR program with it ("Not find ... memory_optimize_pass").
            config.enable_memory_optim()
        config.switch_use_feed_fetch_ops(False)
        self.mkldnn, self.threads, self.format = bool(mkldnn and device == "cpu"), int(threads), files.format
        try:
            self._predictor = inference.create_predictor(config)
        except Exception as e:  # Paddle raises RuntimeError/ValueError/OSError with C++ traces
            raise InferenceModelError(f"{files.program}: Paddle Inference cannot load it ({first_line(e)})") from None
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def _run(self, images: np.ndarray) -> np.ndarray:
        self._input.reshape(list(images.shape))
        self._input.copy_from_cpu(images)
        self._predictor.run()
        return self._output.copy_to_cpu()


def _declared_img_size(files) -> int:
    """The resolution an exported model declares for its input ``x``, read from the program file."""
    try:
        shape = _pir_input_shape(files.program) if files.format == "pir" else _legacy_input_shape(files.program)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise InferenceModelError(f"{files.program}: unreadable program ({type(e).__name__}: {e})") from None
    if shape is None or len(shape) != 4 or shape[1] != 3:
        raise InferenceModelError(f"{files.program}: no [N, 3, S, S] input named 'x' (found {shape})")
    return int(shape[-1])


def _pir_input_shape(program: Path) -> list[int] | None:
    import json

    ops = json.loads(program.read_text())["program"]["regions"][0]["blocks"][0]["ops"]
    for op in ops:
        if op.get("#", "").endswith(".data"):
            attrs = {a["N"]: a["AT"]["D"] for a in op.get("A", []) if isinstance(a, dict)}
            if attrs.get("name") == "x":
                return list(attrs["shape"])
    return None


def _legacy_input_shape(program: Path) -> list[int] | None:
    require_paddle()
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc.FromString(program.read_bytes())
    for var in desc.blocks[0].vars:
        if var.name == "x":
            return list(var.type.dense_tensor.tensor.dims)
    return None


class OnnxRuntimePredictor(Predictor):
    """ONNX Runtime on an ``.onnx`` file from :func:`interop.export_onnx` (backend ``onnxruntime``) or
    :func:`interop.onnx_from_jax.export_onnx_from_jax` (``onnxruntime-jax``); ``metadata`` holds the
    file's ``vitjax.*`` properties (model name, output kind, eval transform; none in Paddle2ONNX's).

    ``threads`` intra-op threads, one inter-op thread, sequential execution, every graph
    optimisation (``ORT_ENABLE_ALL``). ``device="gpu"`` puts the CUDA execution provider
    first (operators it lacks run on the CPU provider, as ONNX Runtime always does) and
    raises :class:`BackendUnavailable` when this onnxruntime build has no CUDA provider.
    """

    backend = "onnxruntime"

    def __init__(
        self, onnx_path: str | os.PathLike, *, threads: int = 1, device: str = "cpu", backend: str = "onnxruntime"
    ):
        self.backend = backend
        if device not in ("cpu", "gpu"):
            raise ValueError(f"onnxruntime device {device!r}; use 'cpu' or 'gpu'")
        ok, reason = onnxruntime_status()
        if not ok:
            raise BackendUnavailable(f"onnxruntime: unavailable: {reason}")
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        if device == "gpu":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise BackendUnavailable(
                    "onnxruntime: unavailable on gpu: this onnxruntime build has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        path = Path(onnx_path)
        if not path.is_file():
            raise InferenceModelError(f"{path}: no such ONNX model")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as e:
            raise InferenceModelError(f"{path}: ONNX Runtime cannot load it ({first_line(e)})") from None
        (inp,) = self._session.get_inputs()
        self._input_name = inp.name
        self.img_size = int(inp.shape[-1])
        self.threads, self.device = int(threads), device
        meta = self._session.get_modelmeta().custom_metadata_map
        self.metadata = {k: v for k, v in meta.items() if k.startswith("vitjax.")}

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input_name: images})[0]


def create_predictor(
    backend: str,
    *,
    model_dir: str | os.PathLike | None = None,
    onnx_path: str | os.PathLike | None = None,
    artifact_path: str | os.PathLike | None = None,
    variables=None,
    model_name: str | None = None,
    softmax: bool = True,
    threads: int = 1,
    mkldnn: bool = True,
    max_batch: int | None = 8,
    pin_threads: bool = True,
    matmul: str = "auto",
) -> Predictor:
    """The predictor for ``backend`` (see :data:`BACKENDS`); raises :class:`BackendUnavailable`
    rather than substituting another backend. ``pin_threads`` and ``matmul`` are
    :class:`JaxPredictor`'s (the ``jax`` backend); ``max_batch`` is TensorRT's and ``jax-export``'s
    batch limit (``None``: none for ``jax-export``)."""
    ok, reason = backend_status(backend)
    if not ok:
        raise BackendUnavailable(f"{backend}: unavailable: {reason}")
    if backend == "jax":
        if variables is None or model_name is None:
            raise ValueError("jax backend: pass variables and model_name")
        return JaxPredictor(variables, model_name, softmax=softmax, pin_threads=pin_threads, matmul=matmul)
    if backend == "jax-export":
        if artifact_path is None:
            raise ValueError("jax-export backend: pass artifact_path")
        return JaxExportPredictor(artifact_path, softmax=softmax, max_batch=max_batch)
    if backend in ("onnxruntime", "onnxruntime-jax"):
        if onnx_path is None:
            raise ValueError(f"{backend} backend: pass onnx_path")
        return OnnxRuntimePredictor(onnx_path, threads=threads, backend=backend)
    if model_dir is None:
        raise ValueError(f"{backend} backend: pass model_dir")
    if backend == "paddle-cpu":
        return PaddleInferencePredictor(model_dir, device="cpu", mkldnn=mkldnn, threads=threads)
    if backend == "paddle-gpu":
        return PaddleInferencePredictor(model_dir, device="gpu")
    return PaddleInferencePredictor(model_dir, device="gpu", tensorrt=backend.rsplit("-", 1)[-1], max_batch=max_batch)
