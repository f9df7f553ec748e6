"""The jitted per-step functions: one training update (loss, gradients, optimizer) and one
evaluation batch (top-1/top-5 counts and loss sums)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vitjax.data.augment import fill_erased
from vitjax.models.registry import get_spec
from vitjax.training.mixing import mix_batch
from vitjax.training.optim import soft_cross_entropy

Teacher = Callable[[jax.Array], jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    # The exponential moving average of ``params`` (``ema.decay`` > 0), else None: a None field is
    # no leaf, so a run without EMA writes the same checkpoints as before EMA existed.
    ema_params: Any = None


def ema_decay(ema_config, update: jax.Array) -> jax.Array:
    """The EMA's decay for update number ``update`` (1-based): 0 for the first (the average
    starts as a copy of the parameters), then ``ema.decay``, or with ``ema.warmup``
    ``min(decay, 1 - (1 + (update - 1) / warmup_gamma) ** -warmup_power)``: timm's
    ``ModelEmaV3`` schedule, so early averages do not drag in the random initialisation."""
    t = jnp.maximum(jnp.asarray(update, jnp.float32) - 1.0, 0.0)
    decay = jnp.float32(ema_config.decay)
    if ema_config.warmup:
        decay = jnp.minimum(decay, 1.0 - (1.0 + t / ema_config.warmup_gamma) ** -ema_config.warmup_power)
    return jnp.where(t > 0, decay, 0.0)


def normalize_on_device(images: jax.Array, mean, std) -> jax.Array:
    """A uint8 ``[B, H, W, C]`` batch as the model's float32 input, computed as the host's
    ``vitjax.data.transforms.normalize`` computes it: ``(x * float32(1/255) - mean) / std``.
    Batches from recipes without per-image float steps travel as uint8 (a quarter of the bytes,
    and no float pass on the host) and are normalised here, inside the jitted step."""
    scale = jnp.float32(1.0 / 255.0)
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) * scale - mean) / std


def check_accum_steps(accum_steps: int, batch_size: int, data_devices: int = 1) -> None:
    """A ``ValueError`` naming ``accum_steps`` and the values allowed, unless it splits
    ``batch_size`` into equal micro-batches that each split evenly over the mesh's data axis."""
    allowed = [k for k in range(1, batch_size + 1) if batch_size % (k * data_devices) == 0]
    if accum_steps < 1 or accum_steps not in allowed:
        over = f" into micro-batches that divide over {data_devices} data devices" if data_devices > 1 else ""
        raise ValueError(
            f"accum_steps={accum_steps} does not split batch_size={batch_size}{over}: "
            f"expected one of {', '.join(map(str, allowed))}"
        )


def micro_batches(x: jax.Array, accum_steps: int) -> jax.Array:
    """``[batch, ...]`` as ``[accum_steps, batch / accum_steps, ...]``; micro-batch ``i`` holds
    rows ``i, i + accum_steps, ...``, so each device's rows stay on that device (the batch is
    split over the data axis in contiguous blocks, and so is every micro-batch)."""
    return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config,
    teacher: Teacher | None,
    micro_sharding: jax.sharding.Sharding | None = None,
) -> Callable:
    """``train_step(state, images, labels[, erase, erase_noise]) -> (state, {"loss", "lr", "grad_norm"})``.

    ``images`` are the model's float input, or uint8 pixels that :func:`normalize_on_device`
    turns into it with the model's mean and std (the training loader's output). With ``erase``
    and ``erase_noise`` (``Batch.erase``/``Batch.erase_noise``: random erasing's rectangles and
    noise, drawn on the host), :func:`~vitjax.data.augment.fill_erased` then erases the
    normalised images as the host's ``random_erasing`` would.

    The step's randomness (mixing, dropout) is ``fold_in(key(config.seed), state.step)``, so
    a resumed run repeats it exactly. Targets are one-hot labels, smoothed by
    ``augment.label_smoothing`` and mixed by :func:`~vitjax.training.mixing.mix_batch`. Distilled
    models without a teacher train one loss on the average of both heads (as PaddleClas
    does); with a teacher, the distillation head learns the teacher's argmax (DeiT's hard
    distillation) and the two losses are averaged.

    With ``accum_steps`` = k > 1 the (already mixed) batch is cut into k micro-batches by
    :func:`micro_batches` and a ``lax.scan`` sums their loss and gradients, so only one
    micro-batch's activations are live at a time; the update uses the means, which equal the
    whole batch's loss and gradient (every loss is a mean over examples and no layer mixes
    examples). Micro-batch ``i`` draws its dropout from ``fold_in(dropout_key, i)``.
    ``micro_sharding`` places the ``[k, batch / k, ...]`` view (data axis on the second
    dimension). With ``ema.decay`` > 0 the step also updates ``state.ema_params``.
    """
    num_classes = config.model.num_classes
    smoothing = config.augment.label_smoothing
    spec = get_spec(config.model.name)
    distilled = spec.distilled
    base_key = jax.random.key(config.seed)
    accum = int(config.get("accum_steps", 1))
    ema = config.get("ema")
    use_ema = ema is not None and ema.decay > 0

    def loss_fn(params, images, targets, dropout_rng):
        out = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_rng})
        if not distilled:
            return soft_cross_entropy(out, targets)
        cls_logits, dist_logits = out
        if teacher is None:  # PaddleClas: one loss on the averaged heads
            return soft_cross_entropy((cls_logits + dist_logits) / 2, targets)
        # DeiT hard-label distillation: the distillation head learns the teacher's argmax.
        teacher_labels = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(teacher(images)), -1), num_classes)
        return 0.5 * soft_cross_entropy(cls_logits, targets) + 0.5 * soft_cross_entropy(dist_logits, teacher_labels)

    grad_fn = jax.value_and_grad(loss_fn)

    def accumulated(params, images, targets, dropout_rng):
        check_accum_steps(accum, images.shape[0])
        xs = (jnp.arange(accum), micro_batches(images, accum), micro_batches(targets, accum))
        if micro_sharding is not None:
            xs = (xs[0], *(jax.lax.with_sharding_constraint(x, micro_sharding) for x in xs[1:]))

        def body(carry, x):
            index, micro_images, micro_targets = x
            loss, grads = grad_fn(params, micro_images, micro_targets, jax.random.fold_in(dropout_rng, index))
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss, grads), _ = jax.lax.scan(body, zeros, xs)
        return jax.tree.map(lambda x: x / accum, (loss, grads))

    def train_step(
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        erase: jax.Array | None = None,
        erase_noise: jax.Array | None = None,
    ):
        if images.dtype == jnp.uint8:  # the loader left normalisation to the device
            images = normalize_on_device(images, spec.eval_transform.mean, spec.eval_transform.std)
        if erase is not None:  # and random erasing: its rectangles and noise, drawn on the host
            images = fill_erased(images, erase, erase_noise)
        rng = jax.random.fold_in(base_key, state.step)
        mix_rng, dropout_rng = jax.random.split(rng)
        targets = jax.nn.one_hot(labels, num_classes)
        if smoothing:
            targets = optax.smooth_labels(targets, smoothing)
        images, targets = mix_batch(mix_rng, images, targets, config.augment)
        if accum > 1:
            loss, grads = accumulated(state.params, images, targets, dropout_rng)
        else:
            loss, grads = grad_fn(state.params, images, targets, dropout_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = None
        if use_ema:
            decay = ema_decay(ema, state.step + 1)
            ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        metrics = {"loss": loss, "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state, ema_params), metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable:
    """``eval_step(params, images, labels, mask)`` -> sums over the unmasked examples:
    ``{"top1", "top5", "loss", "count"}`` (correct counts, cross-entropy sum, examples)."""

    def eval_step(params, images, labels, mask):
        logits = model.apply({"params": params}, images).astype(jnp.float32)
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        correct1 = (top5[:, 0] == labels) & mask
        correct5 = jnp.any(top5 == labels[:, None], axis=-1) & mask
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask
        return {"top1": correct1.sum(), "top5": correct5.sum(), "loss": loss.sum(), "count": mask.sum()}

    return eval_step
