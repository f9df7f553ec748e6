"""Training: ``train_and_evaluate(config, workdir)``.

The set-up reads top to bottom: the experiment (mesh, model, every parameter's sharding),
the training stream and the learning-rate schedule, the train state (restored from the
workdir, or created directly in its sharded layout), the jitted update, then the loop.
The pieces live beside this file:

* :mod:`vitjax.training.experiment`: mesh, models, shardings, initial weights, loaders, eval step
* :mod:`vitjax.training.model_init`: building models, loading ``.pdparams``/checkpoints, the teacher
* :mod:`vitjax.training.steps`: ``TrainState``, the train and eval step functions and the loss
* :mod:`vitjax.training.mixing`: Mixup/CutMix on device
* :mod:`vitjax.training.evaluation`: ``evaluate`` and ``predict`` (``mode=eval``/``predict``)
* :mod:`vitjax.training.monitoring`: the deferred NaN check and ``data_wait``
* :mod:`vitjax.training.preemption`: SIGTERM handling
* :mod:`vitjax.training.checkpoints`: the workdir's orbax checkpoints

The names this module has always offered (``evaluate``, ``predict``, ``Experiment``,
``TrainState``, ``build_model``, ``make_train_step``, ...) are importable from here too.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vitjax.data.pipeline import TrainLoader
from vitjax.hostmem import allocator_advice, allocator_summary
from vitjax.models.registry import get_spec
from vitjax.training import checkpoints, reporting, sharding
from vitjax.training.checkpoints import checkpoint_manager
from vitjax.training.evaluation import class_names, eval_metrics, evaluate, predict
from vitjax.training.experiment import Experiment, to_global, to_host
from vitjax.training.mixing import mix_batch
from vitjax.training.model_init import build_model, image_shape, load_weights, make_teacher, merge_loaded
from vitjax.training.monitoring import InputWaitMeter, LossCheck
from vitjax.training.optim import lr_schedule, make_optimizer
from vitjax.training.preemption import Preempted, PreemptionWatch
from vitjax.training.steps import TrainState, check_accum_steps, make_eval_step, make_train_step

__all__ = [
    "Experiment",
    "Preempted",
    "TrainState",
    "build_model",
    "checkpoint_manager",
    "class_names",
    "evaluate",
    "image_shape",
    "initial_state",
    "jitted_train_step",
    "load_weights",
    "make_eval_step",
    "make_teacher",
    "make_train_step",
    "merge_loaded",
    "mix_batch",
    "predict",
    "to_global",
    "to_host",
    "train_and_evaluate",
    "train_state_layout",
]

_teacher = make_teacher  # its former name here

log = logging.getLogger("vitjax")


def train_and_evaluate(config, workdir: str | Path) -> dict[str, float]:
    """Trains (resuming from ``workdir`` if it has checkpoints), evaluates, and returns the
    final eval metrics."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    reporting.write_config(workdir, config)
    exp = Experiment(config, workdir)
    c = exp.config

    loader = exp.train_loader()
    steps_per_epoch = len(loader.source) / c.batch_size
    total_steps = c.num_steps or max(1, math.ceil(c.num_epochs * steps_per_epoch))
    schedule = lr_schedule(c.optimizer, c.batch_size, steps_per_epoch, total_steps)
    check_accum_steps(c.accum_steps, c.batch_size, exp.mesh.shape[sharding.DATA])
    tx = make_optimizer(c.optimizer, schedule, exp.abstract_params, get_spec(c.model.name).arch.depth)
    abstract_state, state_shardings = train_state_layout(exp, tx)
    manager = checkpoint_manager(workdir, c.keep_checkpoints)
    state = checkpoints.restore_latest_state(manager, abstract_state, state_shardings)
    if state is None:
        state = initial_state(exp, tx, state_shardings)
    else:
        log.info("resumed from %s at step %d", manager.directory, manager.latest_step())

    train_step = jitted_train_step(exp, tx, schedule, state_shardings)
    log.info("host memory: %s", allocator_advice(jax.default_backend()) or allocator_summary())
    log.info(
        "training %s on %s: %d steps of %d images, mesh %s, strategy %s, dense matmuls: %s",
        c.model.name,
        c.data.source,
        total_steps,
        c.batch_size,
        dict(exp.mesh.shape),
        c.sharding.strategy,
        exp.model.matmul,
    )
    writer = reporting.MetricsWriter(workdir)
    state, step = run_steps(exp, state, train_step, loader, manager, writer, total_steps)
    manager.wait_until_finished()
    manager.close()
    if loader.bad_images.skipped:
        log.warning("%d bad training images were skipped", len(loader.bad_images.skipped))

    results = eval_state(exp, state)
    writer.write(step, "eval", results)
    writer.close()
    if reporting.is_chief():
        ema = f"  ema_top1 {results['ema_top1']:.4f}" if "ema_top1" in results else ""
        print(
            f"eval at step {step}: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}{ema}  ({int(results['count'])} images)",
            flush=True,
        )
        if c.plot:
            reporting.plot_curves(workdir)
    return results


def eval_state(exp: Experiment, state: TrainState) -> dict[str, float]:
    """:func:`eval_metrics` of the parameters and, with an EMA, of the EMA as ``ema_top1``,
    ``ema_top5`` and ``ema_loss`` beside them."""
    results = eval_metrics(exp, state.params)
    if state.ema_params is not None:
        ema = eval_metrics(exp, state.ema_params)
        results.update({f"ema_{key}": ema[key] for key in ("top1", "top5", "loss")})
    return results


def train_state_layout(exp: Experiment, tx: optax.GradientTransformation) -> tuple[TrainState, TrainState]:
    """The train state's shapes (``jax.ShapeDtypeStruct`` leaves) and its ``NamedSharding`` per leaf;
    the EMA (``ema.decay`` > 0) is laid out like the parameters."""
    use_ema = exp.config.ema.decay > 0
    abstract_state = jax.eval_shape(
        lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p), p if use_ema else None), exp.abstract_params
    )
    c = exp.config
    shardings = sharding.state_shardings(abstract_state, tx, exp.mesh, c.sharding.strategy, exp.rules)
    return abstract_state, shardings.replace(ema_params=shardings.params if use_ema else None)


def jitted_train_step(
    exp: Experiment, tx: optax.GradientTransformation, schedule: optax.Schedule, state_shardings: TrainState
) -> Callable:
    """The loop's update: ``make_train_step`` jitted over the mesh, the state donated; it takes the
    state and :meth:`Experiment.step_inputs`."""
    micro_sharding = NamedSharding(exp.mesh, P(None, sharding.DATA))
    inputs = 4 if exp.erases_on_device else 2  # images, labels[, erase, erase_noise]: Experiment.step_inputs
    return jax.jit(
        make_train_step(exp.model, tx, schedule, exp.config, make_teacher(exp.config, exp.mesh.size), micro_sharding),
        in_shardings=(state_shardings, *[exp.batch_sharding] * inputs),
        out_shardings=(state_shardings, exp.replicated),
        donate_argnums=0,
    )


def initial_state(exp: Experiment, tx: optax.GradientTransformation, state_shardings: TrainState) -> TrainState:
    """Step 0: the experiment's initial parameters and a fresh optimizer state, sharded; the EMA
    (if any) starts as a copy of the parameters (its own buffers: the state is donated)."""
    params = exp.initial_params()
    opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
    ema = None
    if state_shardings.ema_params is not None:
        ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=state_shardings.ema_params)(params)
    return TrainState(jax.device_put(jnp.zeros((), jnp.int32), exp.replicated), params, opt_state, ema)


def run_steps(
    exp: Experiment,
    state: TrainState,
    train_step: Callable,
    loader: TrainLoader,
    manager: ocp.CheckpointManager,
    writer: reporting.MetricsWriter,
    total_steps: int,
) -> tuple[TrainState, int]:
    """Trains from ``state.step`` to ``total_steps`` and returns the last state and step.

    Logs on the first step, every ``log_every`` steps and the last; evaluates every
    ``eval_every`` steps; checkpoints every ``checkpoint_every`` steps and the last. A
    non-finite loss raises ``FloatingPointError`` naming its step (checked one step late,
    so the host does not wait for the device every step); SIGTERM saves a checkpoint and
    raises :class:`Preempted`.
    """
    c = exp.config
    start = step = int(to_host(state.step))
    progress = reporting.Progress(total_steps, start)
    losses, input_wait = LossCheck(c.nan_check), InputWaitMeter()
    with (
        PreemptionWatch() as preemption,
        contextlib.closing(
            loader.iterate(start, place=exp.step_inputs)  # batches copied to the devices one step ahead
        ) as batches,
    ):
        while step < total_steps:
            with input_wait.waiting():
                inputs = next(batches)
            with input_wait.stepping():
                state, metrics = train_step(state, *inputs)
                step += 1
                losses.after_dispatch(step, metrics["loss"])
            if step % c.log_every == 0 or step == total_steps or step == start + 1:
                with input_wait.stepping():  # waiting for this step to finish is step time, not logging
                    loss = losses.latest()
                log_train_step(writer, progress, step, loss, metrics, input_wait.read())
            if c.eval_every and step % c.eval_every == 0 and step < total_steps:
                writer.write(step, "eval", eval_state(exp, state))
            if step % c.checkpoint_every == 0 or step == total_steps:
                losses.latest()
                checkpoints.save_state(manager, step, state)
            if preemption.requested():
                losses.latest()
                checkpoints.save_state(manager, step, state)
                manager.wait_until_finished()
                log.warning("SIGTERM received: checkpoint saved at step %d; rerun the same command to resume", step)
                raise Preempted(step)
    checkpoints.save_state(manager, step, state)
    return state, step


def log_train_step(
    writer: reporting.MetricsWriter,
    progress: reporting.Progress,
    step: int,
    loss: float,
    metrics: dict[str, jax.Array],
    data_wait: float,
) -> None:
    """One ``train`` record (loss, lr, grad_norm, data_wait) and, on process 0, a progress line."""
    lr = float(to_host(metrics["lr"]))
    grad_norm = float(to_host(metrics["grad_norm"]))
    writer.write(step, "train", {"loss": loss, "lr": lr, "grad_norm": grad_norm, "data_wait": data_wait})
    if reporting.is_chief():
        print(f"{progress.line(step, loss, lr)}  data_wait {data_wait:.0%}", flush=True)
