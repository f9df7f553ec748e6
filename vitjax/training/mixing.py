"""Mixup and CutMix on device, per batch (the DeiT recipe, as PaddleClas's OpSampler applies it).

Each example is mixed with the example at the mirrored position of the batch (``images[::-1]``),
and its one-hot (or smoothed) target with that example's target, in the same proportion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mix_batch(rng: jax.Array, images: jax.Array, targets: jax.Array, augment) -> tuple[jax.Array, jax.Array]:
    """Mixup or CutMix with the reversed batch, chosen per batch.

    ``augment`` is the config's ``augment`` section: with both ``mixup_alpha`` and
    ``cutmix_alpha`` positive, CutMix is chosen with probability ``switch_prob``; the
    chosen mix is applied with probability ``mix_prob``. With both alphas zero the batch
    is returned unchanged. For CutMix the target weight is the area the box leaves
    uncovered, after clipping the box to the image.
    """
    if augment.mixup_alpha <= 0 and augment.cutmix_alpha <= 0:
        return images, targets
    r_apply, r_switch, r_lam, r_y, r_x = jax.random.split(rng, 5)
    if augment.mixup_alpha > 0 and augment.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(r_switch) < augment.switch_prob
    else:
        use_cutmix = jnp.asarray(augment.cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, augment.cutmix_alpha, augment.mixup_alpha)
    lam = jax.random.beta(r_lam, alpha, alpha)
    height, width = images.shape[1:3]
    cut = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
    cy, cx = jax.random.randint(r_y, (), 0, height), jax.random.randint(r_x, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    flipped = images[::-1]
    cutmixed = jnp.where(box[None, :, :, None], flipped, images)
    mixed = lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * flipped
    lam = jnp.where(use_cutmix, 1.0 - (y1 - y0) * (x1 - x0) / (height * width), lam)
    images_out = jnp.where(use_cutmix, cutmixed, mixed)
    apply = jax.random.uniform(r_apply) < augment.mix_prob
    images_out = jnp.where(apply, images_out, images)
    lam = jnp.where(apply, lam, 1.0)
    return images_out, lam * targets + (1.0 - lam) * targets[::-1]
