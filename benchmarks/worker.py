"""One engine in its own process, driven over stdin/stdout by ``benchmarks/run.py``.

Subcommands (``python -m benchmarks.worker --help``):

* ``prepare MODEL DIR``: the shared weights, the exported models, and ``DIR/prepare.json``
  (export times, multiply-accumulates and parameter count);
* ``matmul-ceiling``: FLOP/s of a 2048^3 float32 matmul under XLA (median of 7), printed as JSON;
* ``serve ENGINE MODEL DIR DEVICE THREADS``: loads one engine and answers JSON commands, one per line:

* ``{"cmd": "check", "batch": B}``: the engine's output (logits) on the check batch, as a list
  (training engines: the losses of three steps from the shared weights on a fixed batch);
* ``{"cmd": "warmup", "batch": B, "n": N}``: N untimed calls (the first compiles);
* ``{"cmd": "time", "batch": B}``: one timed call, in seconds;
* ``{"cmd": "memory"}``: peak RSS so far (``ru_maxrss``), current RSS, and device memory;
* ``{"cmd": "quit"}``.

Everything a library prints goes to stderr: the protocol owns the real stdout.

The inference engines for Paddle Inference, ONNX Runtime and our JAX path are the deploy
predictors (``interop.deploy``) built as ``interop.deploy.create_predictor`` builds them for
the parity report, so both measure identically configured engines; every duration is taken
with ``interop.measure``'s timer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from interop.deploy import Predictor

INFERENCE_ENGINES = (
    "jax",
    "jax-xla",
    "jax-unpinned",
    "jax-vw512",
    "jax-bf16",
    "paddle-inference",
    "onnxruntime",
    "paddle-dygraph",
    "timm",
    "timm-compile",
)
# What `benchmarks.run` times unless told otherwise (jax-vw512 is an experiment: no gain measured).
DEFAULT_INFERENCE_ENGINES = tuple(e for e in INFERENCE_ENGINES if e != "jax-vw512")
JAX_INFERENCE_ENGINES = tuple(e for e in INFERENCE_ENGINES if e.startswith("jax"))
# Engines that are our JAX path run with extra XLA flags (set in the worker's environment).
ENGINE_XLA_FLAGS = {"jax-vw512": "--xla_cpu_prefer_vector_width=512"}
# Engines whose difference from `jax` exists only on the CPU (XLA CPU flags, CPU thread pinning).
CPU_ONLY_ENGINES = (*ENGINE_XLA_FLAGS, "jax-unpinned")
# jax-train is what vitjax.main trains with (model.matmul="auto": oneDNN's matmul on one CPU device
# where the kernel builds); jax-xla-train keeps XLA's matmul.
TRAIN_ENGINES = ("jax-train", "jax-xla-train", "paddle-dygraph-train", "timm-train", "timm-compile-train")
SEED = 0
LR, WEIGHT_DECAY = 1e-4, 0.05


def images(batch: int, img_size: int, seed: int = 1) -> np.ndarray:
    """The NCHW float32 batch every engine gets (roughly normalized values)."""
    return np.random.RandomState(seed).standard_normal((batch, 3, img_size, img_size)).astype(np.float32)


def labels(batch: int, num_classes: int = 1000) -> np.ndarray:
    return np.random.RandomState(2).randint(0, num_classes, size=(batch,)).astype(np.int64)


# --------------------------------------------------------------------------- prepare


def prepare(model_name: str, out_dir: Path) -> dict[str, float]:
    """Random init of our Flax model -> the weights every engine loads (``state.npz``), the
    exported Paddle inference model (``paddle/``, logits) and its ONNX conversion (``model.onnx``).

    Writes and returns ``prepare.json``: export times (s), multiply-accumulates per image and
    parameter count (``vitjax.models.complexity``).
    """
    import jax

    import interop
    import vitjax
    from interop.measure import timed
    from vitjax.models.complexity import count

    out_dir.mkdir(parents=True, exist_ok=True)
    size = vitjax.get_spec(model_name).img_size
    model = vitjax.create_model(model_name)
    variables = jax.jit(model.init)(jax.random.key(SEED), np.zeros((1, size, size, 3), np.float32))
    np.savez(out_dir / "state.npz", **vitjax.variables_to_state_dict(variables, model_name))
    _, export_paddle_s = timed(
        lambda: interop.export_inference_model(variables, model_name, out_dir / "paddle", softmax=False)
    )
    _, export_onnx_s = timed(lambda: interop.export_onnx(out_dir / "paddle", out_dir / "model.onnx"))
    complexity = count(model_name)
    info = {
        "export_paddle_s": export_paddle_s,
        "export_onnx_s": export_onnx_s,
        "macs": complexity.total_macs,
        "params": complexity.params,
    }
    (out_dir / "prepare.json").write_text(json.dumps(info))
    return info


def matmul_ceiling(size: int = 2048, calls: int = 7) -> float:
    """FLOP/s of one ``size``^3 float32 matmul under XLA, at the median of ``calls`` timed calls:
    the empirical ceiling of this machine (compilation excluded)."""
    import statistics

    import jax
    import jax.numpy as jnp

    from interop.measure import call_times

    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda m: m @ m)
    matmul(a).block_until_ready()
    return 2 * size**3 / statistics.median(call_times(lambda: matmul(a).block_until_ready(), calls))


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


def _jax_device_peak() -> int | None:
    """Peak bytes in use on JAX's first device (None on the CPU, which keeps no statistics)."""
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return int(stats.get("peak_bytes_in_use", 0)) if stats else None


def deploy_predictor(engine: str, model_name: str, work: Path, device: str, threads: int) -> Predictor:
    """The ``interop.deploy`` predictor behind a benchmark engine, configured as the parity
    report configures that backend (``create_predictor``; logits, not probabilities):

    * ``jax`` / ``jax-vw512``: ``JaxPredictor`` (jit, NCHW in; XLA's CPU workers pinned one per
      core, its default; ``matmul="auto"``: oneDNN's matmuls on a CPU where they build);
      ``jax-xla``: the same on XLA's matmuls; ``jax-unpinned``: ``pin_threads=False``; ``jax-bf16``:
      ``dtype="bfloat16"`` (bf16 compute, float32 parameters and outputs);
    * ``paddle-inference``: ``paddle-cpu`` (oneDNN, ``threads`` math threads, IR optimisation:
      PaddleClas's deploy defaults) or ``paddle-gpu``;
    * ``onnxruntime``: ``OnnxRuntimePredictor`` with ``threads`` intra-op threads; on a GPU
      with the CUDA provider (unavailable without it, never a silent CPU run).
    """
    import vitjax
    from interop.deploy import JaxPredictor, OnnxRuntimePredictor, create_predictor

    if engine in JAX_INFERENCE_ENGINES:
        variables = vitjax.state_dict_to_variables(_load_state(work), model_name)
        if engine == "jax-bf16":
            return JaxPredictor(variables, model_name, softmax=False, dtype="bfloat16")
        return create_predictor(
            "jax",
            variables=variables,
            model_name=model_name,
            softmax=False,
            pin_threads=engine != "jax-unpinned",
            matmul="xla" if engine == "jax-xla" else "auto",
        )
    if engine == "paddle-inference":
        return create_predictor(
            "paddle-cpu" if device == "cpu" else "paddle-gpu", model_dir=work / "paddle", threads=threads
        )
    if engine == "onnxruntime":
        if device == "cpu":
            return create_predictor("onnxruntime", onnx_path=work / "model.onnx", threads=threads)
        return OnnxRuntimePredictor(work / "model.onnx", threads=threads, device=device)
    raise ValueError(f"{engine!r} is not a deploy-predictor engine")


class PredictorEngine(InferenceEngine):
    """A deploy predictor (:func:`deploy_predictor`), called exactly as a user calls it."""

    def __init__(self, predictor: Predictor, device_peak: Callable[[], int | None] | None = None):
        super().__init__()
        self.predictor, self._device_peak = predictor, device_peak
        self.img_size = predictor.img_size
        if hasattr(predictor, "matmul"):  # the JAX predictor's resolved kernel, recorded in the report
            self.info = {"matmul": predictor.matmul}

    def predict(self, x):
        return self.predictor.predict(x)

    def device_memory(self):
        return self._device_peak() if self._device_peak else None


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

    def __init__(self, model_name: str, work: Path, matmul: str = "auto"):
        import jax
        import optax

        import vitjax
        from vitjax.training.model_init import resolve_matmul

        self.jax = jax
        self.img_size = vitjax.get_spec(model_name).img_size
        self.info = {"matmul": resolve_matmul(matmul)}
        model = vitjax.create_model(
            model_name, matmul=self.info["matmul"]
        )  # drop rates 0, as the Paddle mirror has none
        params = vitjax.state_dict_to_variables(_load_state(work), model_name)["params"]
        tx = optax.adamw(
            LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WEIGHT_DECAY
        )  # decays every parameter, as Paddle's AdamW

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
        return _jax_device_peak()


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
            learning_rate=LR,
            beta1=0.9,
            beta2=0.999,
            epsilon=1e-8,
            parameters=self._layer.parameters(),
            weight_decay=WEIGHT_DECAY,
        )

    def _batch(self, batch):
        if batch not in self._batches:
            self._batches[batch] = (
                self.paddle.to_tensor(images(batch, self.img_size)),
                self.paddle.to_tensor(labels(batch)),
            )
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
    import timm
    import torch

    from benchmarks.timm_peer import paddle_to_timm_state, timm_name

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
        self._opt = self.torch.optim.AdamW(
            self._model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY
        )

    def _batch(self, batch):
        if batch not in self._batches:
            self._batches[batch] = (
                self.torch.from_numpy(images(batch, self.img_size)).to(self._dev),
                self.torch.from_numpy(labels(batch)).to(self._dev),
            )
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
    """The engine named ``engine`` (one of :data:`INFERENCE_ENGINES` or :data:`TRAIN_ENGINES`)."""
    if engine in JAX_INFERENCE_ENGINES:
        return PredictorEngine(
            deploy_predictor(engine, model_name, work, device, threads), device_peak=_jax_device_peak
        )
    if engine in ("paddle-inference", "onnxruntime"):
        return PredictorEngine(deploy_predictor(engine, model_name, work, device, threads))
    if engine == "paddle-dygraph":
        return PaddleDygraphEngine(model_name, work, device, threads)
    if engine in ("jax-train", "jax-xla-train"):
        return JaxTrainEngine(model_name, work, matmul="auto" if engine == "jax-train" else "xla")
    if engine == "paddle-dygraph-train":
        return PaddleTrainEngine(model_name, work, device, threads)
    if engine in ("timm", "timm-compile"):
        return TimmEngine(model_name, work, device, threads, compile=engine == "timm-compile")
    if engine in ("timm-train", "timm-compile-train"):
        return TimmTrainEngine(model_name, work, device, threads, compile=engine == "timm-compile-train")
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(INFERENCE_ENGINES + TRAIN_ENGINES)}")


def _rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _error_text(e: BaseException) -> str:
    """``Type: first line of the message`` (native libraries append pages of C++ trace)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def answer(engine: Engine, msg: dict) -> dict:
    """The reply to one protocol command (see the module docstring) other than ``quit``."""
    from interop.measure import call_times

    cmd = msg["cmd"]
    if cmd == "check":
        return {"ok": True, "output": engine.check(msg["batch"])}
    if cmd == "warmup":
        return {"ok": True, "seconds": sum(call_times(lambda: engine.run(msg["batch"]), msg["n"]))}
    if cmd == "time":
        return {"ok": True, "seconds": call_times(lambda: engine.run(msg["batch"]), 1)[0]}
    if cmd == "memory":
        return {"ok": True, "maxrss": _maxrss_bytes(), "rss": _rss_bytes(), "device_peak": engine.device_memory()}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


def serve(engine_name: str, model_name: str, work: Path, device: str, threads: int) -> None:
    """Loads the engine, says so (load time, RSS), then answers commands from stdin until ``quit`` or EOF."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter to stderr
    sys.stdout = sys.stderr

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    from interop.measure import timed

    if engine_name.startswith("jax"):
        # What vitjax's entry points do (python -m vitjax.main, interop serve): glibc keeps freed step
        # buffers for reuse (VITJAX_MALLOC=system turns it off). The peers run on the allocator as it comes.
        from vitjax.hostmem import keep_freed_memory

        keep_freed_memory()
    try:
        engine, load_s = timed(lambda: make_engine(engine_name, model_name, work, device, threads))
        reply(
            {
                "ok": True,
                "load_s": load_s,
                "rss": _rss_bytes(),
                "maxrss": _maxrss_bytes(),
                "info": getattr(engine, "info", {}),
            }
        )
    except Exception as e:  # reported to the driver, which records the engine as failed
        reply({"ok": False, "error": _error_text(e)})
        return
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            reply({"ok": True})
            return
        try:
            reply(answer(engine, msg))
        except Exception as e:
            reply({"ok": False, "error": _error_text(e)})


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.worker", description="One benchmark engine process (driven by benchmarks.run)."
    )
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="weights, exported models and prepare.json for one model")
    prep.add_argument("model")
    prep.add_argument("dir", type=Path)
    sub.add_parser("matmul-ceiling", help="FLOP/s of a 2048^3 float32 matmul under XLA, as JSON")
    srv = sub.add_parser("serve", help="load one engine and answer JSON commands on stdin")
    srv.add_argument("engine", choices=INFERENCE_ENGINES + TRAIN_ENGINES)
    srv.add_argument("model")
    srv.add_argument("dir", type=Path)
    srv.add_argument("device", choices=("cpu", "gpu"))
    srv.add_argument("threads", type=int)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "prepare":
        print(json.dumps(prepare(args.model, args.dir)))
    elif args.command == "matmul-ceiling":
        print(json.dumps({"flops": matmul_ceiling()}))
    else:
        serve(args.engine, args.model, args.dir, args.device, args.threads)


if __name__ == "__main__":
    main()
