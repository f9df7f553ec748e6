"""Optimizers and learning-rate schedules of PaddleClas's recipes, in optax, and the
fine-tuning extras: layer-wise learning-rate decay and per-parameter multipliers."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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
        name = _path_name(key_path)
        if any(part in name for part in no_decay):
            return False
        return decay_one_dim or leaf.ndim > 1

    return jax.tree_util.tree_map_with_path(decays, params)


def _path_name(key_path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in key_path)


def layer_id(path: str, depth: int) -> int:
    """The layer a parameter belongs to for layer-wise decay, as timm's ``group_matcher`` of
    DeiT and TNT groups them: 0 for the stem (tokens, position embeddings, patch/pixel
    embedding), ``i + 1`` for ``blocks_i``, ``depth`` for the final ``norm`` (with the last
    block), ``depth + 1`` for the heads and anything else after the trunk."""
    top = path.split("/")[0]
    if match := re.fullmatch(r"blocks_(\d+)", top):
        return int(match.group(1)) + 1
    if top == "norm":
        return depth
    if top.startswith("head"):
        return depth + 1
    return 0


def layer_decay_scales(params: Any, depth: int, decay: float, min_scale: float = 0.0) -> Any:
    """Each parameter's learning-rate scale ``max(min_scale, decay ** (depth + 1 - layer_id))``:
    1 for the head, ``decay`` for the last block and the final norm, ``decay ** (depth + 1)``
    for the stem (timm's ``param_groups_layer_decay``)."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"optimizer.layer_decay={decay}: expected 0 (off) or a value in (0, 1]")
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: max(min_scale, decay ** (depth + 1 - layer_id(_path_name(kp), depth))), params
    )


def lr_multipliers(params: Any, opt_config, depth: int) -> Any | None:
    """The per-parameter learning-rate scales of ``optimizer.layer_decay`` and
    ``optimizer.lr_mults``, or ``None`` when neither is set.

    ``lr_mults`` holds ``(regex, multiplier)`` pairs searched in each ``/``-joined parameter
    path (``blocks_0/attn/qkv/kernel``); every matching pair multiplies the scale. A pattern
    that matches no parameter is a ``ValueError`` naming it and the model's top-level names.
    """
    decay = opt_config.get("layer_decay", 0.0)
    mults = [(str(pattern), float(mult)) for pattern, mult in opt_config.get("lr_mults", ())]
    if not decay and not mults:
        return None
    if decay:
        scales = layer_decay_scales(params, depth, decay, opt_config.get("layer_decay_min_scale", 0.0))
    else:
        scales = jax.tree.map(lambda _: 1.0, params)
    names = [_path_name(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pattern, mult in mults:
        if not any(re.search(pattern, name) for name in names):
            tops = sorted({name.split("/")[0] for name in names if not re.fullmatch(r"blocks_\d+", name.split("/")[0])})
            blocks = f"blocks_0 ... blocks_{depth - 1}, " if depth else ""
            raise ValueError(
                f"optimizer.lr_mults: {pattern!r} matches no parameter; parameter paths look like "
                f"{names[len(names) // 2]!r}, under {blocks}{', '.join(tops)}"
            )
        if mult < 0:
            raise ValueError(f"optimizer.lr_mults: {pattern!r} has multiplier {mult}; expected >= 0")
    return jax.tree_util.tree_map_with_path(
        lambda kp, scale: scale * float(np.prod([m for p, m in mults if re.search(p, _path_name(kp))])), scales
    )


def scale_per_parameter(scales: Any) -> optax.GradientTransformation:
    """Multiplies each parameter's update by its scale (a tree of floats like the parameters).

    Placed after the optimizer it scales that parameter's learning rate: AdamW's and
    momentum SGD's updates are linear in the rate, decoupled weight decay included, which
    is what timm's ``lr_scale`` does to a parameter group."""
    return optax.stateless(lambda updates, params=None: jax.tree.map(lambda u, s: u * s, updates, scales))


def make_optimizer(
    opt_config, schedule: optax.Schedule, params: Any, depth: int | None = None
) -> optax.GradientTransformation:
    """The recipe's optimizer; with ``layer_decay`` or ``lr_mults`` set (``depth``: the model's
    number of blocks), each parameter's update scaled by :func:`lr_multipliers`."""
    mask = decay_mask(params, tuple(opt_config.no_decay), opt_config.decay_one_dim)
    clip = [optax.clip_by_global_norm(opt_config.grad_clip)] if opt_config.grad_clip > 0 else []
    if depth is None and opt_config.get("layer_decay", 0.0):
        raise ValueError("optimizer.layer_decay needs the model's depth")
    scales = lr_multipliers(params, opt_config, depth or 0)
    scaled = [] if scales is None else [scale_per_parameter(scales)]
    if opt_config.name == "adamw":
        main = optax.adamw(
            schedule,
            b1=opt_config.b1,
            b2=opt_config.b2,
            eps=opt_config.eps,
            weight_decay=opt_config.weight_decay,
            mask=mask,
        )
        return optax.chain(*clip, main, *scaled)
    if opt_config.name == "momentum":
        # Paddle's Momentum with L2Decay adds the decay to the gradient before momentum.
        return optax.chain(
            *clip,
            optax.add_decayed_weights(opt_config.weight_decay, mask),
            optax.sgd(schedule, momentum=opt_config.momentum),
            *scaled,
        )
    raise ValueError(f"unknown optimizer.name {opt_config.name!r}: expected adamw or momentum")


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy against soft targets (label smoothing, mixup), in float32."""
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))
