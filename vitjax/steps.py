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

from vitjax.mixing import mix_batch
from vitjax.models.registry import get_spec
from vitjax.optim import soft_cross_entropy

Teacher = Callable[[jax.Array], jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, config, teacher: Teacher | None
) -> Callable:
    """``train_step(state, images, labels) -> (state, {"loss", "lr", "grad_norm"})``.

    The step's randomness (mixing, dropout) is ``fold_in(key(config.seed), state.step)``, so
    a resumed run repeats it exactly. Targets are one-hot labels, smoothed by
    ``augment.label_smoothing`` and mixed by :func:`~vitjax.mixing.mix_batch`. Distilled
    models without a teacher train one loss on the average of both heads (as PaddleClas
    does); with a teacher, the distillation head learns the teacher's argmax (DeiT's hard
    distillation) and the two losses are averaged.
    """
    num_classes = config.model.num_classes
    smoothing = config.augment.label_smoothing
    distilled = get_spec(config.model.name).distilled
    base_key = jax.random.key(config.seed)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        rng = jax.random.fold_in(base_key, state.step)
        mix_rng, dropout_rng = jax.random.split(rng)
        targets = jax.nn.one_hot(labels, num_classes)
        if smoothing:
            targets = optax.smooth_labels(targets, smoothing)
        images, targets = mix_batch(mix_rng, images, targets, config.augment)
        teacher_labels = None
        if teacher is not None:
            teacher_labels = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(teacher(images)), -1), num_classes)

        def loss_fn(params):
            out = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_rng})
            if not distilled:
                return soft_cross_entropy(out, targets)
            cls_logits, dist_logits = out
            if teacher_labels is None:  # PaddleClas: one loss on the averaged heads
                return soft_cross_entropy((cls_logits + dist_logits) / 2, targets)
            # DeiT hard-label distillation: the distillation head learns the teacher's argmax.
            return 0.5 * soft_cross_entropy(cls_logits, targets) + 0.5 * soft_cross_entropy(dist_logits, teacher_labels)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

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
