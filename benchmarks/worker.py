"""One engine in its own process, driven over stdin/stdout by ``benchmarks/run.py``.

``python -m benchmarks.worker prepare MODEL DIR`` writes the shared weights and the exported
models; ``python -m benchmarks.worker serve ENGINE MODEL DIR DEVICE`` loads one engine and
answers JSON commands, one per line:

* ``{"cmd": "check", "batch": B}``: the engine's output (logits) on the check batch, as a list
  (training engines: the losses of three steps from the shared weights on a fixed batch);
* ``{"cmd": "warmup", "batch": B, "n": N}``: N untimed calls (the first compiles);
* ``{"cmd": "time", "batch": B}``: one timed call, in seconds;
* ``{"cmd": "memory"}``: peak RSS so far (``ru_maxrss``), current RSS, and device memory;
* ``{"cmd": "quit"}``.

Everything a library prints goes to stderr: the protocol owns the real stdout.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

INFERENCE_ENGINES = ("jax", "jax-vw512", "jax-bf16", "paddle-inference", "onnxruntime", "paddle-dygraph", "timm", "timm-compile")
# Engines that are our JAX path run with extra XLA flags (set in the worker's environment).
ENGINE_XLA_FLAGS = {"jax-vw512": "--xla_cpu_prefer_vector_width=512"}
TRAIN_ENGINES = ("jax-train", "paddle-dygraph-train", "timm-train", "timm-compile-train")
SEED = 0
LR, WEIGHT_DECAY = 1e-4, 0.05


def images(batch: int, img_size: int, seed: int = 1) -> np.ndarray:
    """The NCHW float32 batch every engine gets (roughly normalized values)."""
    return np.random.RandomState(seed).standard_normal((batch, 3, img_size, img_size)).astype(np.float32)


def labels(batch: int, num_classes: int = 1000) -> np.ndarray:
    return np.random.RandomState(2).randint(0, num_classes, size=(batch,)).astype(np.int64)


# --------------------------------------------------------------------------- prepare


def prepare(model_name: str, out_dir: Path) -> None:
    """Random init of our Flax model -> the weights every engine loads, and the exported models."""
    import jax

    import interop
    import vitjax

    out_dir.mkdir(parents=True, exist_ok=True)
    size = vitjax.get_spec(model_name).img_size
    model = vitjax.create_model(model_name)
    variables = jax.jit(model.init)(jax.random.key(SEED), np.zeros((1, size, size, 3), np.float32))
    state = interop.variables_to_state_dict(variables, model_name)
    np.savez(out_dir / "state.npz", **state)
    started = time.perf_counter()
    interop.export_inference_model(variables, model_name, out_dir / "paddle", softmax=False)
    exported = time.perf_counter()
    interop.export_onnx(out_dir / "paddle", out_dir / "model.onnx")
    timings = {"export_paddle_s": exported - started, "export_onnx_s": time.perf_counter() - exported}
    (out_dir / "prepare.json").write_text(json.dumps(timings))


# --------------------------------------------------------------------------- engines


def _load_state(work: Path) -> dict[str, np.ndarray]:
    with np.load(work / "state.npz") as data:
        return {k: data[k] for k in data.files}


class Engine:
    img_size: int

    def run(self, batch: int) -> None:
        raise NotImplementedError

    def check(self, batch: int) -> list:
        raise NotImplementedError

    def device_memory(self) -> int | None:
        return None


class InferenceEngine(Engine):
    """Runs ``predict`` on an NCHW float32 numpy batch and returns numpy logits (engines copy in and out)."""

    def __init__(self):
        self._inputs: dict[int, np.ndarray] = {}

    def _input(self, batch: int) -> np.ndarray:
        if batch not in self._inputs:
            self._inputs[batch] = images(batch, self.img_size)
        return self._inputs[batch]

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, batch: int) -> None:
        self.predict(self._input(batch))

    def check(self, batch: int) -> list:
        return np.asarray(self.predict(images(batch, self.img_size, seed=3)), np.float64).tolist()


class JaxEngine(InferenceEngine):
    def __init__(self, model_name: str, work: Path, dtype: str):
        super().__init__()
        import jax
        import jax.numpy as jnp

        import interop
        import vitjax
        from interop.deploy import JaxPredictor

        variables = interop.state_dict_to_variables(_load_state(work), model_name)
        self.img_size = vitjax.get_spec(model_name).img_size
        self.jax = jax
        if dtype == "float32":
            # Exactly what a user deploys: interop's JAX predictor (jit, NCHW in, logits out).
            self._predict = JaxPredictor(variables, model_name, softmax=False).predict
        else:
            model = vitjax.create_model(model_name, dtype=getattr(jnp, dtype))

            @jax.jit
            def forward(v, x):
                return model.apply(v, x.transpose(0, 2, 3, 1)).astype(jnp.float32)

            self._predict = lambda x: np.asarray(forward(variables, x))
        self.device = jax.devices()[0]

    def predict(self, x):
        return self._predict(x)

    def device_memory(self):
        stats = self.device.memory_stats() if self.device.platform != "cpu" else None
        return int(stats.get("peak_bytes_in_use", 0)) if stats else None


class PaddleInferenceEngine(InferenceEngine):
    def __init__(self, work: Path, device: str, threads: int):
        super().__init__()
        from interop.deploy import PaddleInferencePredictor

        # PaddleClas's deploy defaults on CPU: oneDNN on, its kernel cache, IR optimisation on.
        self._p = PaddleInferencePredictor(work / "paddle", device=device, mkldnn=True, threads=threads)
        self.img_size = self._p.img_size

    def predict(self, x):
        return self._p.predict(x)


class OnnxRuntimeEngine(InferenceEngine):
    def __init__(self, work: Path, device: str, threads: int):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._s = ort.InferenceSession(str(work / "model.onnx"), options, providers=providers)
        inp = self._s.get_inputs()[0]
        self._name, self.img_size = inp.name, int(inp.shape[-1])

    def predict(self, x):
        return self._s.run(None, {self._name: x})[0]


def _paddle_threads(paddle, threads: int) -> None:
    """Dygraph's CPU kernels (Eigen/MKL/oneDNN) use this many threads (OMP_NUM_THREADS is set too)."""
    set_threads = getattr(paddle.base.core, "set_num_threads", None)
    if set_threads is not None:
        set_threads(int(threads))


class PaddleDygraphEngine(InferenceEngine):
    def __init__(self, model_name: str, work: Path, device: str, threads: int):
        super().__init__()
        import paddle

        from interop.paddle_models import build_paddle_model, load_numpy_state

        paddle.set_device("gpu" if device == "gpu" else "cpu")
        _paddle_threads(paddle, threads)
        self.paddle = paddle
        self._layer = load_numpy_state(build_paddle_model(model_name), _load_state(work))
        self._layer.eval()
        self.img_size = self._layer.arch.img_size

    def predict(self, x):
        with self.paddle.no_grad():
            return self._layer(self.paddle.to_tensor(x)).numpy()

    def device_memory(self):
        if self.paddle.device.is_compiled_with_cuda() and self.paddle.device.cuda.device_count():
            return int(self.paddle.device.cuda.max_memory_allocated())
        return None


class TrainEngine(Engine):
    """A training step engine: ``run`` is one step; ``check`` the losses of 3 steps from fresh weights."""

    def _reset(self) -> None:
        raise NotImplementedError

    def check(self, batch):
        self._reset()
        losses = [self.run(batch) for _ in range(3)]
        self._reset()
        return losses


class JaxTrainEngine(TrainEngine):
    """value_and_grad of the cross-entropy + optax AdamW, one jitted step (params/opt state donated)."""

    def __init__(self, model_name: str, work: Path):
        import jax
        import optax

        import interop
        import vitjax

        self.jax = jax
        self.img_size = vitjax.get_spec(model_name).img_size
        model = vitjax.create_model(model_name)  # drop rates 0, as the Paddle mirror has none
        params = interop.state_dict_to_variables(_load_state(work), model_name)["params"]
        tx = optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WEIGHT_DECAY)  # decays every parameter, as Paddle's AdamW

        def loss_fn(p, x, y):
            logits = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jax.numpy.float32), y).mean()

        def step(p, opt_state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._init = (params, tx)
        self._state = None
        self._batches: dict[int, tuple] = {}
        self.device = jax.devices()[0]

    def _reset(self):
        params, tx = self._init
        params = self.jax.tree.map(lambda a: self.jax.numpy.array(a, copy=True), params)
        self._state = (params, tx.init(params))

    def _batch(self, batch):
        if batch not in self._batches:
            x = self.jax.device_put(np.ascontiguousarray(images(batch, self.img_size).transpose(0, 2, 3, 1)))
            self._batches[batch] = (x, self.jax.device_put(labels(batch).astype(np.int32)))
        return self._batches[batch]

    def run(self, batch):
        if self._state is None:
            self._reset()
        p, s, loss = self._step(*self._state, *self._batch(batch))
        self._state = (p, s)
        return float(loss)

    def device_memory(self):
        stats = self.device.memory_stats() if self.device.platform != "cpu" else None
        return int(stats.get("peak_bytes_in_use", 0)) if stats else None


class PaddleTrainEngine(TrainEngine):
    """The Paddle mirror in train mode: forward, cross-entropy, loss.backward(), AdamW step, clear_grad()."""

    def __init__(self, model_name: str, work: Path, device: str, threads: int):
        import paddle

        from interop.paddle_models import build_paddle_model

        paddle.set_device("gpu" if device == "gpu" else "cpu")
        _paddle_threads(paddle, threads)
        self.paddle, self.model_name, self.state = paddle, model_name, _load_state(work)
        self.build = build_paddle_model
        self.img_size = build_paddle_model(model_name).arch.img_size
        self._batches: dict[int, tuple] = {}
        self._layer = None

    def _reset(self):
        from interop.paddle_models import load_numpy_state

        paddle = self.paddle
        self._layer = load_numpy_state(self.build(self.model_name), self.state)
        self._layer.train()
        self._opt = paddle.optimizer.AdamW(
            learning_rate=LR, beta1=0.9, beta2=0.999, epsilon=1e-8, parameters=self._layer.parameters(), weight_decay=WEIGHT_DECAY
        )

    def _batch(self, batch):
        if batch not in self._batches:
            self._batches[batch] = (self.paddle.to_tensor(images(batch, self.img_size)), self.paddle.to_tensor(labels(batch)))
        return self._batches[batch]

    def run(self, batch):
        if self._layer is None:
            self._reset()
        x, y = self._batch(batch)
        loss = self.paddle.nn.functional.cross_entropy(self._layer(x), y)
        loss.backward()
        self._opt.step()
        self._opt.clear_grad()
        return float(loss)

    def device_memory(self):
        if self.paddle.device.is_compiled_with_cuda() and self.paddle.device.cuda.device_count():
            return int(self.paddle.device.cuda.max_memory_allocated())
        return None


def _timm_model(model_name: str, work: Path, device: str, threads: int):
    """timm's model on our shared weights (PaddleClas layout in state.npz), torch on ``threads`` threads."""
    import torch

    from benchmarks.timm_peer import paddle_to_timm_state, timm_name
    import timm

    torch.set_num_threads(threads)
    state = paddle_to_timm_state(_load_state(work), model_name)
    model = timm.create_model(timm_name(model_name), pretrained=False, num_classes=state["head.bias"].shape[0])
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return model.to("cuda" if device == "gpu" else "cpu"), torch


class TimmEngine(InferenceEngine):
    """timm eval-mode forward under ``torch.inference_mode``, optionally ``torch.compile``d (inductor)."""

    def __init__(self, model_name: str, work: Path, device: str, threads: int, compile: bool):
        super().__init__()
        self._model, self.torch = _timm_model(model_name, work, device, threads)
        self._model.eval()
        self._fn = self.torch.compile(self._model) if compile else self._model
        self._device = "cuda" if device == "gpu" else "cpu"
        self.img_size = vitjax_img_size(model_name)

    def predict(self, x):
        with self.torch.inference_mode():
            return self._fn(self.torch.from_numpy(x).to(self._device)).cpu().numpy()


class TimmTrainEngine(TrainEngine):
    """timm in train mode: forward, cross-entropy, backward, torch AdamW (decays every parameter), zero_grad."""

    def __init__(self, model_name: str, work: Path, device: str, threads: int, compile: bool):
        self._model, self.torch = _timm_model(model_name, work, device, threads)
        self._model.train()
        self._initial = {k: v.detach().clone() for k, v in self._model.state_dict().items()}
        self._fn = self.torch.compile(self._model) if compile else self._model
        self._dev = "cuda" if device == "gpu" else "cpu"
        self.img_size = vitjax_img_size(model_name)
        self._batches: dict[int, tuple] = {}
        self._opt = None

    def _reset(self):
        # Same module (a compiled graph stays valid), initial weights, a fresh optimizer.
        self._model.load_state_dict(self._initial)
        self._opt = self.torch.optim.AdamW(self._model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=WEIGHT_DECAY)

    def _batch(self, batch):
        if batch not in self._batches:
            self._batches[batch] = (self.torch.from_numpy(images(batch, self.img_size)).to(self._dev),
                                    self.torch.from_numpy(labels(batch)).to(self._dev))
        return self._batches[batch]

    def run(self, batch):
        if self._opt is None:
            self._reset()
        x, y = self._batch(batch)
        loss = self.torch.nn.functional.cross_entropy(self._fn(x), y)
        loss.backward()
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)
        return float(loss)

    def device_memory(self):
        cuda = self.torch.cuda
        return int(cuda.max_memory_allocated()) if self._dev == "cuda" else None


def vitjax_img_size(model_name: str) -> int:
    import vitjax

    return vitjax.get_spec(model_name).img_size


def make_engine(engine: str, model_name: str, work: Path, device: str, threads: int) -> Engine:
    if engine in ("jax", "jax-vw512"):
        return JaxEngine(model_name, work, "float32")
    if engine == "jax-bf16":
        return JaxEngine(model_name, work, "bfloat16")
    if engine == "paddle-inference":
        return PaddleInferenceEngine(work, device, threads)
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(work, device, threads)
    if engine == "paddle-dygraph":
        return PaddleDygraphEngine(model_name, work, device, threads)
    if engine == "jax-train":
        return JaxTrainEngine(model_name, work)
    if engine == "paddle-dygraph-train":
        return PaddleTrainEngine(model_name, work, device, threads)
    if engine in ("timm", "timm-compile"):
        return TimmEngine(model_name, work, device, threads, compile=engine == "timm-compile")
    if engine in ("timm-train", "timm-compile-train"):
        return TimmTrainEngine(model_name, work, device, threads, compile=engine == "timm-compile-train")
    raise ValueError(f"unknown engine {engine!r}")


def _rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def serve(engine_name: str, model_name: str, work: Path, device: str, threads: int) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter to stderr
    sys.stdout = sys.stderr

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        started = time.perf_counter()
        engine = make_engine(engine_name, model_name, work, device, threads)
        reply({"ok": True, "load_s": time.perf_counter() - started, "rss": _rss_bytes(),
               "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
    except Exception as e:  # reported to the driver, which records the engine as failed
        reply({"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"})
        return
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            if cmd == "quit":
                reply({"ok": True})
                return
            if cmd == "check":
                reply({"ok": True, "output": engine.check(msg["batch"])})
            elif cmd == "warmup":
                started = time.perf_counter()
                for _ in range(msg["n"]):
                    engine.run(msg["batch"])
                reply({"ok": True, "seconds": time.perf_counter() - started})
            elif cmd == "time":
                started = time.perf_counter()
                engine.run(msg["batch"])
                reply({"ok": True, "seconds": time.perf_counter() - started})
            elif cmd == "memory":
                reply({"ok": True, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                       "rss": _rss_bytes(), "device_peak": engine.device_memory()})
            else:
                reply({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:
            reply({"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"})


def main(argv: list[str]) -> None:
    if argv[0] == "prepare":
        prepare(argv[1], Path(argv[2]))
    elif argv[0] == "serve":
        serve(argv[1], argv[2], Path(argv[3]), argv[4], int(argv[5]))
    else:
        raise SystemExit(f"usage: python -m benchmarks.worker prepare MODEL DIR | serve ENGINE MODEL DIR DEVICE THREADS (got {argv})")


if __name__ == "__main__":
    main(sys.argv[1:])
