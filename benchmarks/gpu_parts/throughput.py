"""Parts 3 and 4: training and inference throughput, our JAX path against timm on the same device.

Every engine starts from the same weights (one random init of our Flax model, seed 0, on the
CPU; timm gets them through :mod:`benchmarks.timm_peer`), the same synthetic batch (resident
on the device: no host-to-device copy is timed, on either side) and, for training, the same
loss and optimizer: cross-entropy on random labels, AdamW with ``benchmarks.worker``'s
``LR``/``WEIGHT_DECAY`` (decay on every parameter), no dropout.

* training, JAX: ``dtype=bfloat16`` (bf16 compute, fp32 parameters and optimizer state), one
  jitted step, parameters and optimizer state donated;
* training, timm: ``torch.autocast(bfloat16)`` (AMP: fp32 parameters), ``torch.optim.AdamW``
  (``fused=True`` on CUDA), eager and ``torch.compile`` (the model; the optimizer step stays eager);
* inference: JAX fp32 and bf16 (``jax.jit`` of ``apply``); timm eager fp32 and bf16 (autocast),
  ``torch.compile`` bf16, then fp32 while time is left. fp32 matmuls run at each library's
  TF32 setting made equal: JAX's default precision, torch's ``set_float32_matmul_precision("high")``.

Steps run in chunks of ``train_steps`` (calls: ``infer_calls``) with one device sync per chunk,
until the chunk count reaches about ``train_seconds``; warm-up steps (compilation) are not timed.
A batch that does not fit is halved until it does; each row says which batch ran.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import numpy as np

from benchmarks.gpu_parts.common import TOY_TIMM, Recorder, Sizes, error_text, is_oom


def init_variables(name: str):
    """Our model's variables, seed 0, initialised on the CPU (the same bits in every job)."""
    import jax

    import vitjax

    size = vitjax.get_spec(name).img_size
    with jax.default_device(jax.devices("cpu")[0]):
        variables = jax.jit(vitjax.create_model(name).init)(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
    return jax.device_get(variables)


@functools.cache
def macs(name: str) -> int:
    from vitjax.models.complexity import count

    return count(name).total_macs


def timed_chunks(run_chunk: Callable[[], None], chunk: int, min_seconds: float, deadline: float) -> tuple[int, float]:
    """(calls, seconds) for whole chunks of ``chunk`` calls (``run_chunk`` ends with a device sync)."""
    start, calls = time.perf_counter(), 0
    while True:
        run_chunk()
        calls += chunk
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or time.time() + elapsed / (calls / chunk) > deadline:
            return calls, elapsed


def _halving(batch: int, attempt: Callable[[int], dict], rec: Recorder, base: dict) -> None:
    """``attempt(batch)`` with the batch halved on out-of-memory; one record either way."""
    tried = []
    while batch >= 1:
        try:
            rec.write({**base, **attempt(batch), "batch": batch, "batches_out_of_memory": tried})
            return
        except Exception as e:
            if not is_oom(e) or batch == 1:
                rec.write({**base, "batch": batch, "batches_out_of_memory": tried, "error": error_text(e)})
                return
            tried.append(batch)
            batch //= 2
            _free_device_memory()


def _free_device_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# --------------------------------------------------------------------------- JAX


def _jax_peak_bytes() -> int | None:
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return int(stats.get("peak_bytes_in_use", 0)) if stats else None


def train_jax(args: dict, rec: Recorder, sizes: Sizes) -> None:
    import jax
    import jax.numpy as jnp
    import optax

    import vitjax
    from benchmarks.worker import LR, WEIGHT_DECAY, images, labels

    for name in sizes.train_models:
        base = {"item": "train", "engine": "jax-bf16", "model": name}
        if rec.left() < 10:
            rec.write({**base, "skipped": "the part's time budget ran out"})
            continue
        host_params = init_variables(name)["params"]
        size = vitjax.get_spec(name).img_size
        model = vitjax.create_model(name, dtype=jnp.bfloat16)
        tx = optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WEIGHT_DECAY)

        def loss_fn(p, x, y, model=model):
            logits = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

        def step(p, opt_state, x, y, tx=tx, loss_fn=loss_fn):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        jitted = jax.jit(step, donate_argnums=(0, 1))

        def attempt(batch, host_params=host_params, jitted=jitted, tx=tx, size=size):
            params = jax.device_put(host_params)
            state = [params, tx.init(params)]
            x = jax.device_put(np.ascontiguousarray(images(batch, size).transpose(0, 2, 3, 1)))
            y = jax.device_put(labels(batch).astype(np.int32))
            start = time.perf_counter()
            losses = []
            for _ in range(sizes.train_warmup):
                state[0], state[1], loss = jitted(state[0], state[1], x, y)
                losses.append(float(loss))
            warmup_s = time.perf_counter() - start

            def chunk():
                loss = None
                for _ in range(sizes.train_steps):
                    state[0], state[1], loss = jitted(state[0], state[1], x, y)
                loss.block_until_ready()

            steps, seconds = timed_chunks(chunk, sizes.train_steps, sizes.train_seconds, rec.deadline)
            del state[:]
            return {
                "images_per_s": steps * batch / seconds,
                "ms_per_step": 1e3 * seconds / steps,
                "steps": steps,
                "warmup_s": warmup_s,
                "first_losses": losses[:3],
                "device_peak_bytes": _jax_peak_bytes(),
            }

        _halving(sizes.train_batch, attempt, rec, {**base, "macs": macs(name)})
        jax.clear_caches()
        _free_device_memory()


def infer_jax(args: dict, rec: Recorder, sizes: Sizes) -> None:
    import jax
    import jax.numpy as jnp

    import vitjax
    from benchmarks.worker import images

    for name in sizes.infer_models:
        variables = None
        for dtype in ("fp32", "bf16"):
            for batch in sizes.infer_batches:
                base = {"item": "infer", "engine": f"jax-{dtype}", "model": name}
                if rec.left() < 5:
                    rec.write({**base, "batch": batch, "skipped": "the part's time budget ran out"})
                    continue
                try:
                    if variables is None:
                        variables = jax.device_put(init_variables(name))
                    size = vitjax.get_spec(name).img_size
                    model = vitjax.create_model(name, dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32)
                    forward = jax.jit(model.apply)
                    x = jax.device_put(np.ascontiguousarray(images(batch, size).transpose(0, 2, 3, 1)))
                    start = time.perf_counter()
                    forward(variables, x).block_until_ready()
                    warmup_s = time.perf_counter() - start

                    def chunk(forward=forward, x=x, variables=variables):
                        out = None
                        for _ in range(sizes.infer_calls):
                            out = forward(variables, x)
                        out.block_until_ready()

                    calls, seconds = timed_chunks(chunk, sizes.infer_calls, sizes.infer_seconds, rec.deadline)
                    rec.write(
                        {
                            **base,
                            "batch": batch,
                            "images_per_s": calls * batch / seconds,
                            "ms_per_call": 1e3 * seconds / calls,
                            "calls": calls,
                            "warmup_s": warmup_s,
                            "macs": macs(name),
                        }
                    )
                except Exception as e:
                    rec.write({**base, "batch": batch, "error": error_text(e)})
        variables = None
        jax.clear_caches()


# --------------------------------------------------------------------------- timm


def _torch_setup(sizes: Sizes):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.set_float32_matmul_precision("high")  # TF32 where the GPU has it, as JAX's default precision
    return torch, device


def timm_model(name: str, device: str):
    """timm's model for ``name`` on our seed-0 weights (strict load), on ``device``."""
    import timm
    import torch

    from benchmarks.timm_peer import paddle_to_timm_state, timm_name
    from vitjax.weights.convert import variables_to_state_dict

    state = paddle_to_timm_state(variables_to_state_dict(init_variables(name), name), name)
    family, kwargs = TOY_TIMM.get(name, (None, {}))
    model = timm.create_model(family or timm_name(name), pretrained=False, num_classes=1000, **kwargs)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return model.to(device)


def _sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _torch_peak(torch, device: str) -> int | None:
    return int(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def train_timm(args: dict, rec: Recorder, sizes: Sizes) -> None:
    torch, device = _torch_setup(sizes)
    import vitjax
    from benchmarks.worker import LR, WEIGHT_DECAY, images, labels

    for name in sizes.train_models:
        size = vitjax.get_spec(name).img_size
        for engine in ("timm-eager-amp", "timm-compile-amp"):
            base = {"item": "train", "engine": engine, "model": name}
            if rec.left() < 10:
                rec.write({**base, "skipped": "the part's time budget ran out"})
                continue

            def attempt(batch, engine=engine, name=name, size=size):
                model = timm_model(name, device).train()
                fn = torch.compile(model, backend=sizes.compile_backend) if engine == "timm-compile-amp" else model
                extra = {"fused": True} if device == "cuda" else {}
                opt = torch.optim.AdamW(
                    model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY, **extra
                )
                x = torch.from_numpy(images(batch, size)).to(device)
                y = torch.from_numpy(labels(batch)).to(device)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()

                def step():
                    with torch.autocast(device, dtype=torch.bfloat16):
                        loss = torch.nn.functional.cross_entropy(fn(x).float(), y)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    return loss

                start = time.perf_counter()
                losses = [float(step()) for _ in range(sizes.train_warmup)]
                warmup_s = time.perf_counter() - start

                def chunk():
                    for _ in range(sizes.train_steps):
                        step()
                    _sync(torch, device)

                steps, seconds = timed_chunks(chunk, sizes.train_steps, sizes.train_seconds, rec.deadline)
                return {
                    "images_per_s": steps * batch / seconds,
                    "ms_per_step": 1e3 * seconds / steps,
                    "steps": steps,
                    "warmup_s": warmup_s,
                    "first_losses": losses[:3],
                    "device_peak_bytes": _torch_peak(torch, device),
                    "compile_backend": sizes.compile_backend if "compile" in engine else None,
                    "optimizer": "torch.optim.AdamW" + (" (fused)" if extra else ""),
                }

            _halving(sizes.train_batch, attempt, rec, {**base, "macs": macs(name)})
            torch._dynamo.reset()
            _free_device_memory()


def infer_timm(args: dict, rec: Recorder, sizes: Sizes) -> None:
    torch, device = _torch_setup(sizes)
    import vitjax
    from benchmarks.worker import images

    plan = [(e, d) for e, d in (("timm-eager", "fp32"), ("timm-eager", "bf16"))]
    plan += [("timm-compile", "bf16"), ("timm-compile", "fp32")]
    for engine, dtype in plan:
        for name in sizes.infer_models:
            size = vitjax.get_spec(name).img_size
            model = None
            for batch in sizes.infer_batches:
                base = {"item": "infer", "engine": f"{engine}-{dtype}", "model": name, "batch": batch}
                if rec.left() < 5:
                    rec.write({**base, "skipped": "the part's time budget ran out"})
                    continue
                try:
                    if model is None:
                        model = timm_model(name, device).eval()
                        fn = (
                            torch.compile(model, backend=sizes.compile_backend, dynamic=False)
                            if engine == "timm-compile"
                            else model
                        )
                    x = torch.from_numpy(images(batch, size)).to(device)

                    def call(fn=fn, x=x, dtype=dtype):
                        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=dtype == "bf16"):
                            return fn(x)

                    start = time.perf_counter()
                    call()
                    _sync(torch, device)
                    warmup_s = time.perf_counter() - start

                    def chunk(call=call):
                        for _ in range(sizes.infer_calls):
                            call()
                        _sync(torch, device)

                    calls, seconds = timed_chunks(chunk, sizes.infer_calls, sizes.infer_seconds, rec.deadline)
                    rec.write(
                        {
                            **base,
                            "images_per_s": calls * batch / seconds,
                            "ms_per_call": 1e3 * seconds / calls,
                            "calls": calls,
                            "warmup_s": warmup_s,
                            "macs": macs(name),
                            "compile_backend": sizes.compile_backend if engine == "timm-compile" else None,
                        }
                    )
                except Exception as e:
                    rec.write({**base, "error": error_text(e)})
            del model
            torch._dynamo.reset()
            _free_device_memory()
