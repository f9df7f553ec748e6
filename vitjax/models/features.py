"""Looking inside a model: any blocks' outputs, every block's attention, and attention rollout.

:func:`forward_intermediates` is timm's ``forward_intermediates`` for our two families, in JAX:
the same block indices (an int takes the last n blocks, a list takes those blocks, negative
indices count from the end), the same optional early stop, and one result holding every view a
researcher asks for: the token sequences, the patch tokens as an NHWC grid with the class (and
distillation) tokens beside it, TNT's inner pixel tokens, the final normed tokens, the head's input
and, on request, the attention weights. It is a pure function of the variables and the images,
so ``jax.jit`` (with the model and the options static) and sharded inputs work as with ``apply``.

:func:`attention_rollout` combines the per-block attention into one token-to-token map
(Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers").
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Indices = int | Sequence[int] | None


class Intermediates(NamedTuple):
    """What :func:`forward_intermediates` returns. Dicts are keyed by the absolute block index
    (0 = the first block), in increasing order.

    * ``tokens[i]``: block ``i``'s output sequence ``[batch, prefix + H*W, C]`` (TNT: the outer
      tokens), class (and distillation) tokens first.
    * ``grid[i]``: its patch tokens as ``[batch, H/p, W/p, C]`` (row-major, as the patches lie).
    * ``prefix[i]``: its class (DeiT distilled: class and distillation) tokens ``[batch, prefix, C]``.
    * ``pixels[i]``: TNT's inner (pixel) tokens ``[batch, H/p * W/p, words, in_dim]``; empty for DeiT.
    * ``attention[i]``: block ``i``'s token attention ``[batch, heads, tokens, tokens]``
      (TNT: the outer attention), softmax weights before dropout; only with ``attention=True``.
    * ``pixel_attention[i]``: TNT's inner attention ``[batch, patches, heads, words, words]``.
    * ``features``: the final norm over the whole sequence ``[batch, tokens, C]``;
      ``pre_logits``: what the head sees ``[batch, C]`` (distilled DeiT: the mean of the class and
      distillation tokens, which is what its averaged heads see); ``logits``: the model's output.
      All three are ``None`` when the run stopped early before the last block.
    """

    tokens: dict[int, jax.Array]
    grid: dict[int, jax.Array]
    prefix: dict[int, jax.Array]
    pixels: dict[int, jax.Array]
    attention: dict[int, jax.Array]
    pixel_attention: dict[int, jax.Array]
    features: jax.Array | None
    pre_logits: jax.Array | None
    logits: jax.Array | None


def take_indices(depth: int, indices: Indices) -> tuple[int, ...]:
    """Absolute block indices, as timm reads them: ``None`` every block, an int ``n`` the last
    ``n`` blocks, a sequence those blocks (negative ones from the end). Sorted, without repeats;
    anything out of range is a ``ValueError`` naming the value and the allowed range."""
    if indices is None:
        return tuple(range(depth))
    if isinstance(indices, bool | str) or not isinstance(indices, Integral | Sequence):
        raise ValueError(f"indices={indices!r}: expected an int (the last n blocks) or a list of block indices")
    if isinstance(indices, Integral):
        indices = int(indices)
        if not 1 <= indices <= depth:
            raise ValueError(f"indices={indices}: the last n blocks needs n from 1 to {depth} (the model's depth)")
        return tuple(range(depth - indices, depth))
    if not indices:
        raise ValueError("indices=[]: name at least one block")
    taken = set()
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, Integral) or not -depth <= i < depth:
            raise ValueError(
                f"block index {i!r} is out of range: the model has {depth} blocks (allowed {-depth} to {depth - 1})"
            )
        taken.add(int(i) % depth)
    return tuple(sorted(taken))


def forward_intermediates(
    model: nn.Module,
    variables,
    images: jax.Array,
    indices: Indices = None,
    *,
    stop_early: bool = False,
    attention: bool = False,
) -> Intermediates:
    """Runs ``model`` (a DeiT or TNT module) on NHWC ``images`` in inference mode and returns the
    outputs of the blocks ``indices`` picks (see :func:`take_indices`) as an :class:`Intermediates`.

    ``stop_early=True`` runs no block after the last one asked for (and so no norm or head unless
    the last block is asked for). ``attention=True`` also returns the attention weights of every
    block that ran, computed on the unfused path that materialises them (the fused oneDNN kernel
    never forms them). For ``jax.jit``, pass the model and the options as static arguments, with
    ``indices`` as a tuple: ``jax.jit(forward_intermediates, static_argnums=(0, 3),
    static_argnames=("stop_early", "attention"))``.
    """
    arch = model.arch
    taken = take_indices(arch.depth, indices)
    num_blocks = taken[-1] + 1 if stop_early and taken[-1] + 1 < arch.depth else None
    mutable = ["intermediates", "attention"] if attention else ["intermediates"]
    out, state = model.apply(variables, images, train=False, num_blocks=num_blocks, mutable=mutable)
    sown = state["intermediates"]
    prefix = arch.num_prefix_tokens
    side = arch.grid_size
    blocks = sown["blocks"]
    tokens = {i: blocks[i] for i in taken}
    grid = {i: t[:, prefix:].reshape(t.shape[0], side, side, t.shape[-1]) for i, t in tokens.items()}
    pixels = {i: sown["inner_blocks"][i] for i in taken} if "inner_blocks" in sown else {}
    token_attention, pixel_attention = _attention_weights(state.get("attention", {}), len(blocks))
    finished = num_blocks is None
    return Intermediates(
        tokens=tokens,
        grid=grid,
        prefix={i: t[:, :prefix] for i, t in tokens.items()},
        pixels=pixels,
        attention=token_attention,
        pixel_attention=pixel_attention,
        features=sown["features"][0] if finished else None,
        pre_logits=sown["pre_logits"][0] if finished else None,
        logits=out if finished else None,
    )


def _attention_weights(sown: dict, num_blocks: int) -> tuple[dict[int, jax.Array], dict[int, jax.Array]]:
    """The sown ``blocks_<i>/attn*/weights`` as (token attention, TNT's inner attention) per block."""
    token, pixel = {}, {}
    for i in range(num_blocks):
        block = sown.get(f"blocks_{i}", {})
        if "attn" in block:
            token[i] = block["attn"]["weights"][0]
        if "attn_out" in block:
            token[i] = block["attn_out"]["weights"][0]
        if "attn_in" in block:
            pixel[i] = block["attn_in"]["weights"][0]
    return token, pixel


def attention_rollout(attentions: Sequence[jax.Array], residual: float = 0.5) -> jax.Array:
    """Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on each input
    token through all the given blocks, ``[batch, tokens, tokens]``, rows summing to 1.

    Each block's attention ``[batch, heads, tokens, tokens]`` is first averaged over its heads
    (the mean, as the paper does), then the residual connection is accounted for by mixing in the
    identity, ``A' = (1 - residual) * A + residual * I`` (``residual=0.5`` is the paper's choice:
    the block's output is taken as half attention, half skip connection), and the rows are
    renormalised. The rollout is the product ``A'_last ... A'_first`` (first block applied first).
    The MLPs and norms act per token and move nothing between tokens, so they are left out.
    """
    if not attentions:
        raise ValueError("attention_rollout needs the attention of at least one block")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual={residual}: expected a weight between 0 and 1")
    rollout = None
    for weights in attentions:
        mixed = weights.astype(jnp.float32).mean(axis=1)
        mixed = (1.0 - residual) * mixed + residual * jnp.eye(mixed.shape[-1], dtype=mixed.dtype)
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        rollout = mixed if rollout is None else jnp.einsum("bij,bjk->bik", mixed, rollout)
    return rollout


def class_token_rollout(
    model: nn.Module, attentions: dict[int, jax.Array] | Sequence[jax.Array], residual: float = 0.5
):
    """The class token's row of :func:`attention_rollout` over the patch tokens, as a
    ``[batch, H/p, W/p]`` map that sums to at most 1 (the rest goes to the prefix tokens).
    ``attentions``: every block's token attention, e.g. ``forward_intermediates(...,
    attention=True).attention`` (TNT: the outer attention; the inner attention mixes the
    words of one patch and moves nothing between patches)."""
    weights = list(attentions.values()) if isinstance(attentions, dict) else list(attentions)
    if len(weights) != model.arch.depth:
        raise ValueError(f"the rollout needs all {model.arch.depth} blocks' attention, got {len(weights)}")
    row = attention_rollout(weights, residual)[:, 0, model.arch.num_prefix_tokens :]
    side = model.arch.grid_size
    return row.reshape(row.shape[0], side, side)
