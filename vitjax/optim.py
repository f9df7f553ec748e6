"""Optimizers and learning-rate schedules of PaddleClas's recipes, in optax."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def scaled_peak_lr(opt_config, batch_size: int) -> float:
    """The linear scaling rule: ``base_lr`` is the rate at ``lr_batch_base`` images per step."""
    return opt_config.base_lr * batch_size / opt_config.lr_batch_base


def lr_schedule(opt_config, batch_size: int, steps_per_epoch: float, total_steps: int) -> optax.Schedule:
    peak = scaled_peak_lr(opt_config, batch_size)
    warmup = int(round(opt_config.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, max(total_steps - 1, 0))
    if opt_config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=opt_config.warmup_start_lr if warmup else peak,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=opt_config.min_lr,
        )
    if opt_config.schedule == "piecewise":
        boundaries, previous = {}, 1.0
        for epoch, scale in zip(opt_config.piecewise_epochs, opt_config.piecewise_scales, strict=True):
            boundaries[int(round(epoch * steps_per_epoch))] = scale / previous
            previous = scale
        decayed = optax.piecewise_constant_schedule(peak, boundaries)
        if not warmup:
            return decayed
        ramp = optax.linear_schedule(opt_config.warmup_start_lr, peak, warmup)
        return optax.join_schedules([ramp, decayed], [warmup])
    if opt_config.schedule == "constant":
        return optax.constant_schedule(peak)
    raise ValueError(f"unknown optimizer.schedule {opt_config.schedule!r}: expected cosine, piecewise or constant")


def decay_mask(params: Any, no_decay: tuple[str, ...], decay_one_dim: bool) -> Any:
    """True for parameters that get weight decay. As in PaddleClas, a parameter is exempt
    when its name contains any of ``no_decay`` (``norm`` covers every LayerNorm), or, unless
    ``decay_one_dim``, when it is 1-D (biases)."""

    def decays(key_path, leaf) -> bool:
        name = "/".join(str(getattr(k, "key", k)) for k in key_path)
        if any(part in name for part in no_decay):
            return False
        return decay_one_dim or leaf.ndim > 1

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt_config, schedule: optax.Schedule, params: Any) -> optax.GradientTransformation:
    mask = decay_mask(params, tuple(opt_config.no_decay), opt_config.decay_one_dim)
    clip = [optax.clip_by_global_norm(opt_config.grad_clip)] if opt_config.grad_clip > 0 else []
    if opt_config.name == "adamw":
        main = optax.adamw(
            schedule,
            b1=opt_config.b1,
            b2=opt_config.b2,
            eps=opt_config.eps,
            weight_decay=opt_config.weight_decay,
            mask=mask,
        )
        return optax.chain(*clip, main)
    if opt_config.name == "momentum":
        # Paddle's Momentum with L2Decay adds the decay to the gradient before momentum.
        return optax.chain(
            *clip,
            optax.add_decayed_weights(opt_config.weight_decay, mask),
            optax.sgd(schedule, momentum=opt_config.momentum),
        )
    raise ValueError(f"unknown optimizer.name {opt_config.name!r}: expected adamw or momentum")


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy against soft targets (label smoothing, mixup), in float32."""
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))
