"""Position embeddings at another resolution.

A model created with ``img_size=384`` from 224 weights needs its patch position
embeddings resampled from a 14x14 to a 24x24 grid. The class (and distillation) token
embeddings are kept as they are; the grid is resampled bicubically, as timm and the
DeiT authors do for fine-tuning at higher resolution.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Top-level parameter holding the position embeddings, per family.
POSITION_EMBEDDING_NAMES = ("pos_embed", "patch_pos")


def resize_position_embeddings(posemb: np.ndarray, num_prefix_tokens: int, new_grid: int) -> np.ndarray:
    """Resamples ``[1, prefix + g*g, dim]`` embeddings to ``[1, prefix + new_grid**2, dim]``."""
    posemb = np.asarray(posemb)
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    if posemb.ndim != 3 or grid.shape[1] == 0 or new_grid <= 0:
        raise ValueError(f"position embeddings of shape {list(posemb.shape)} hold no grid of patches to resize")
    old_grid = math.isqrt(grid.shape[1])
    if old_grid * old_grid != grid.shape[1]:
        raise ValueError(f"position embeddings of {grid.shape[1]} patches do not form a square grid")
    if old_grid == new_grid:
        return posemb
    dim = grid.shape[-1]
    grid = jnp.asarray(grid.reshape(old_grid, old_grid, dim), jnp.float32)
    resized = jax.image.resize(grid, (new_grid, new_grid, dim), method="bicubic", antialias=False)
    resized = np.asarray(resized, dtype=posemb.dtype).reshape(1, new_grid * new_grid, dim)
    return np.concatenate([prefix, resized], axis=1)
