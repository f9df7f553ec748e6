"""DeiT (data-efficient image transformers), plain and distilled, as PaddleClas builds them.

Submodule and parameter names follow PaddleClas's ``state_dict`` keys
(``blocks.3.attn.qkv.weight`` is ``params['blocks_3']['attn']['qkv']['kernel']``), so the
weight mapping in ``interop/`` is a renaming, not a search.

Inputs are NHWC float images; outputs are logits. A distilled model returns
``(cls_logits, dist_logits)`` when ``train=True`` and their average otherwise.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vitjax.models.layers import (
    ConvAsMatmul,
    DropPath,
    Dtype,
    Mlp,
    check_image_size,
    check_num_blocks,
    dense,
    layer_norm,
    packed_multi_head_attention,
    trunc_normal,
)


@dataclasses.dataclass(frozen=True)
class DeiTArch:
    """The hyper-parameters that tell DeiT variants apart."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    epsilon: float = 1e-6
    distilled: bool = False
    in_chans: int = 3

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return 2 if self.distilled else 1


class Attention(nn.Module):
    dim: int
    num_heads: int
    qkv_bias: bool
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    dtype: Dtype = jnp.float32
    matmul: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        batch, tokens, _ = x.shape
        head_dim = self.dim // self.num_heads
        qkv = dense(3 * self.dim, "qkv", use_bias=self.qkv_bias, dtype=self.dtype, matmul=self.matmul)(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        dropout = record = None
        if self.attn_drop_rate > 0.0 and not deterministic:
            dropout = lambda w: nn.Dropout(self.attn_drop_rate)(w, deterministic=False)  # noqa: E731
        if self.is_mutable_collection("attention") and not self.is_initializing():
            # the weights were asked for: [batch, heads, tokens, tokens], softmax before dropout
            record = lambda w: self.sow("attention", "weights", w)  # noqa: E731
        out = packed_multi_head_attention(qkv, qkv, qkv, (0, 1, 2), dropout, self.matmul, record).reshape(
            batch, tokens, self.dim
        )
        out = dense(self.dim, "proj", dtype=self.dtype, matmul=self.matmul)(out)
        return nn.Dropout(self.proj_drop_rate)(out, deterministic=deterministic)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    arch: DeiTArch
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32
    matmul: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        arch = self.arch
        drop_path = DropPath(self.drop_path_rate)
        y = layer_norm(arch.epsilon, "norm1", self.dtype)(x)
        y = Attention(
            arch.embed_dim,
            arch.num_heads,
            arch.qkv_bias,
            self.attn_drop_rate,
            self.drop_rate,
            dtype=self.dtype,
            matmul=self.matmul,
            name="attn",
        )(y, deterministic)
        x = x + drop_path(y, deterministic)
        y = layer_norm(arch.epsilon, "norm2", self.dtype)(x)
        y = Mlp(
            int(arch.embed_dim * arch.mlp_ratio), arch.embed_dim, self.drop_rate, self.dtype, self.matmul, name="mlp"
        )(y, deterministic)
        return x + drop_path(y, deterministic)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution, flattened row-major into tokens.

    Computed as one matmul over the flattened patches (the same parameters as ``nn.Conv``).
    """

    embed_dim: int
    patch_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.patch_size
        patches = rearrange(images, "b (gh p1) (gw p2) c -> b (gh gw) p1 p2 c", p1=p, p2=p)
        return ConvAsMatmul(self.embed_dim, (p, p), dtype=self.dtype, name="proj")(patches)


class DeiT(nn.Module):
    """A DeiT classifier (``DeiT_*`` in PaddleClas). ``num_classes=0`` returns the features.

    Looking inside (what :func:`vitjax.forward_intermediates` reads): with the ``intermediates``
    collection mutable, every block's output tokens are sown as ``blocks`` (a tuple, block 0
    first), the final normed tokens as ``features`` and the head's input as ``pre_logits``; with the
    ``attention`` collection mutable, each block's attention weights as ``blocks_<i>/attn/weights``.
    ``num_blocks`` runs only the first ``num_blocks`` blocks and returns their output tokens
    (no norm, no head).
    """

    arch: DeiTArch
    num_classes: int = 1000
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32
    matmul: str = "xla"  # "onednn": the dense layers run oneDNN's matmul on the CPU (vitjax.kernels.onednn)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, *, num_blocks: int | None = None):
        arch = self.arch
        check_image_size(images, arch.img_size, arch.in_chans)
        check_num_blocks(num_blocks, arch.depth)
        deterministic = not train
        x = PatchEmbed(arch.embed_dim, arch.patch_size, self.dtype, name="patch_embed")(images.astype(self.dtype))
        batch = x.shape[0]
        num_tokens = arch.grid_size**2 + arch.num_prefix_tokens
        pos_embed = self.param("pos_embed", trunc_normal, (1, num_tokens, arch.embed_dim))
        cls_token = self.param("cls_token", trunc_normal, (1, 1, arch.embed_dim))
        prefix = [cls_token]
        if arch.distilled:
            prefix.append(self.param("dist_token", trunc_normal, (1, 1, arch.embed_dim)))
        prefix = [jnp.broadcast_to(t, (batch, 1, arch.embed_dim)).astype(x.dtype) for t in prefix]
        x = jnp.concatenate([*prefix, x], axis=1) + pos_embed.astype(x.dtype)
        x = nn.Dropout(self.drop_rate)(x, deterministic=deterministic)

        rates = np.linspace(0.0, self.drop_path_rate, arch.depth)
        for i in range(arch.depth if num_blocks is None else num_blocks):
            x = Block(
                arch, self.drop_rate, self.attn_drop_rate, float(rates[i]), self.dtype, self.matmul, name=f"blocks_{i}"
            )(x, deterministic)
            self.sow("intermediates", "blocks", x)
        if num_blocks is not None:
            return x
        x = layer_norm(arch.epsilon, "norm", self.dtype)(x)
        self.sow("intermediates", "features", x)

        pre_logits = x[:, 0] if not arch.distilled else (x[:, 0] + x[:, 1]) / 2
        self.sow("intermediates", "pre_logits", pre_logits)
        if self.num_classes <= 0:
            return pre_logits
        logits = dense(self.num_classes, "head", dtype=self.dtype, matmul=self.matmul)(x[:, 0])
        if not arch.distilled:
            return logits
        dist_logits = dense(self.num_classes, "head_dist", dtype=self.dtype, matmul=self.matmul)(x[:, 1])
        if train:
            return logits, dist_logits
        return (logits + dist_logits) / 2
