"""TNT (Transformer in Transformer), as PaddleClas builds it.

Each 16x16 image patch is cut into a 4x4 grid of "pixel" (word) embeddings by a 7x7,
stride-4 convolution applied to the patch on its own (zero padding at the patch
border). An inner transformer mixes the 16 words of every patch; their concatenation
is projected into the patch (sentence) embedding, which an outer transformer mixes.

Names follow PaddleClas's ``state_dict`` keys, as in ``deit.py``.
"""

from __future__ import annotations

import dataclasses
import math

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
class TNTArch:
    embed_dim: int
    in_dim: int
    depth: int
    num_heads: int
    in_num_heads: int = 4
    patch_size: int = 16
    img_size: int = 224
    first_stride: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    epsilon: float = 1e-5
    in_chans: int = 3

    def __post_init__(self):
        # PaddleClas's block reshapes the words of a patch straight into the patch
        # width, and adds pixel_pos of length patch_size to the words of a patch.
        if self.num_pixel * self.in_dim != self.embed_dim or self.num_pixel != self.patch_size:
            raise ValueError(f"unsupported TNT shape {self}: needs words*in_dim == embed_dim and words == patch_size")

    @property
    def new_patch_size(self) -> int:
        return math.ceil(self.patch_size / self.first_stride)

    @property
    def num_pixel(self) -> int:
        return self.new_patch_size**2

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return 1


class Attention(nn.Module):
    """TNT's attention: q and k from one ``qk`` projection, v from its own ``v`` projection."""

    dim: int
    num_heads: int
    qkv_bias: bool
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    dtype: Dtype = jnp.float32
    matmul: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        *lead, tokens, _ = x.shape
        x = x.reshape(-1, tokens, self.dim)
        head_dim = self.dim // self.num_heads
        qk = dense(2 * self.dim, "qk", use_bias=self.qkv_bias, dtype=self.dtype, matmul=self.matmul)(x)
        qk = qk.reshape(x.shape[0], tokens, 2, self.num_heads, head_dim)
        v = dense(self.dim, "v", use_bias=self.qkv_bias, dtype=self.dtype, matmul=self.matmul)(x)
        v = v.reshape(x.shape[0], tokens, 1, self.num_heads, head_dim)
        dropout = record = None
        if self.attn_drop_rate > 0.0 and not deterministic:
            dropout = lambda w: nn.Dropout(self.attn_drop_rate)(w, deterministic=False)  # noqa: E731
        if self.is_mutable_collection("attention") and not self.is_initializing():
            # the weights were asked for: [*lead, heads, tokens, tokens], softmax before dropout
            record = lambda w: self.sow("attention", "weights", w.reshape(*lead, *w.shape[1:]))  # noqa: E731
        out = packed_multi_head_attention(qk, qk, v, (0, 1, 0), dropout, self.matmul, record).reshape(
            x.shape[0], tokens, self.dim
        )
        out = dense(self.dim, "proj", dtype=self.dtype, matmul=self.matmul)(out)
        out = nn.Dropout(self.proj_drop_rate)(out, deterministic=deterministic)
        return out.reshape(*lead, tokens, self.dim)


class Block(nn.Module):
    """One TNT block: inner transformer on words, projection into patches, outer transformer."""

    arch: TNTArch
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32
    matmul: str = "xla"

    @nn.compact
    def __call__(self, pixel_embed: jax.Array, patch_embed: jax.Array, deterministic: bool):
        arch, eps = self.arch, self.arch.epsilon
        drop_path = DropPath(self.drop_path_rate)
        drop_path_in = DropPath(self.drop_path_rate, sample_dims=2)

        def attention(dim: int, heads: int, name: str) -> Attention:
            return Attention(
                dim, heads, arch.qkv_bias, self.attn_drop_rate, self.drop_rate, self.dtype, self.matmul, name=name
            )

        # Inner transformer over the words of each patch: [batch, patches, words, in_dim].
        y = attention(arch.in_dim, arch.in_num_heads, "attn_in")(
            layer_norm(eps, "norm_in", self.dtype)(pixel_embed), deterministic
        )
        pixel_embed = pixel_embed + drop_path_in(y, deterministic)
        y = layer_norm(eps, "norm_mlp_in", self.dtype)(pixel_embed)
        y = Mlp(4 * arch.in_dim, arch.in_dim, self.drop_rate, self.dtype, self.matmul, name="mlp_in")(y, deterministic)
        pixel_embed = pixel_embed + drop_path_in(y, deterministic)

        # Words of a patch, concatenated, are added to that patch (not to the class token).
        batch, patches = pixel_embed.shape[:2]
        words = pixel_embed.reshape(batch, patches, arch.num_pixel * arch.in_dim)
        words = layer_norm(eps, "norm1_proj", self.dtype)(words)
        words = dense(arch.embed_dim, "proj", use_bias=False, dtype=self.dtype, matmul=self.matmul)(words)
        words = layer_norm(eps, "norm2_proj", self.dtype)(words)
        patch_embed = jnp.concatenate([patch_embed[:, :1], patch_embed[:, 1:] + words], axis=1)

        # Outer transformer over the class token and the patches.
        y = attention(arch.embed_dim, arch.num_heads, "attn_out")(
            layer_norm(eps, "norm_out", self.dtype)(patch_embed), deterministic
        )
        patch_embed = patch_embed + drop_path(y, deterministic)
        y = layer_norm(eps, "norm_mlp", self.dtype)(patch_embed)
        y = Mlp(
            int(arch.embed_dim * arch.mlp_ratio), arch.embed_dim, self.drop_rate, self.dtype, self.matmul, name="mlp"
        )(y, deterministic)
        patch_embed = patch_embed + drop_path(y, deterministic)
        return pixel_embed, patch_embed


class PixelEmbed(nn.Module):
    """Cuts images into patches and each patch into a grid of word embeddings.

    Returns ``[batch, patches, words, in_dim]`` with words in row-major order.
    """

    arch: TNTArch
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        arch = self.arch
        p, stride, k, pad = arch.patch_size, arch.first_stride, 7, 3
        s = arch.new_patch_size
        batch = images.shape[0]
        # The 7x7 stride-4 convolution of each patch (zero padding at the patch border) as one
        # matmul: lay out every window of every patch, [batch * patches, s * s, 7, 7, c].
        patches = rearrange(images, "b (gh p1) (gw p2) c -> (b gh gw) p1 p2 c", p1=p, p2=p)
        windows = _conv_windows(patches, k, stride, pad, s)
        words = ConvAsMatmul(arch.in_dim, (k, k), dtype=self.dtype, name="proj")(windows)
        return words.reshape(batch, arch.grid_size**2, arch.num_pixel, arch.in_dim)


def _conv_windows(x: jax.Array, k: int, stride: int, pad: int, out: int) -> jax.Array:
    """The ``out x out`` windows (``k x k``, stride ``stride``, zero padding ``pad``) of each image in
    ``x[n, h, w, c]``, as ``[n, out * out, k, k, c]`` in row-major window order.

    Rows are cut into blocks of ``stride``: window row ``stride * i + a`` is row ``a % stride``
    of block ``i + a // stride``, so every window is a few block-shifted slices concatenated,
    which XLA fuses into one copy (16 separate window slices ran ~2x slower).
    """
    n, size, _, c = x.shape
    blocks = -(-(stride * (out - 1) + k) // stride)
    after = blocks * stride - size - pad
    x = jnp.pad(x, ((0, 0), (pad, max(after, 0)), (pad, max(after, 0)), (0, 0)))[
        :, : blocks * stride, : blocks * stride
    ]
    x = x.reshape(n, blocks, stride, blocks, stride, c)
    shifts = range(-(-k // stride))
    rows = jnp.concatenate([x[:, m : m + out, : min(stride, k - m * stride)] for m in shifts], axis=2)  # n i a bj aj c
    cols = jnp.concatenate(
        [rows[:, :, :, m : m + out, : min(stride, k - m * stride)] for m in shifts], axis=4
    )  # n i a j b c
    return cols.transpose(0, 1, 3, 2, 4, 5).reshape(n, out * out, k, k, c)


class TNT(nn.Module):
    """A TNT classifier (``TNT_small``/``TNT_base`` in PaddleClas).

    Looking inside, as in :class:`vitjax.models.deit.DeiT`: with ``intermediates`` mutable every
    block's outer (patch) tokens are sown as ``blocks`` and its inner (pixel) tokens
    ``[batch, patches, words, in_dim]`` as ``inner_blocks``, then ``features`` and ``pre_logits``;
    with ``attention`` mutable, ``blocks_<i>/attn_in/weights`` ``[batch, patches, heads, words,
    words]`` and ``blocks_<i>/attn_out/weights`` ``[batch, heads, tokens, tokens]``.
    ``num_blocks`` runs only the first blocks and returns their outer tokens.
    """

    arch: TNTArch
    num_classes: int = 1000
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32
    matmul: str = "xla"  # "onednn": the dense layers run oneDNN's matmul on the CPU (vitjax.kernels.onednn)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, *, num_blocks: int | None = None) -> jax.Array:
        arch, eps = self.arch, self.arch.epsilon
        check_image_size(images, arch.img_size, arch.in_chans)
        check_num_blocks(num_blocks, arch.depth)
        deterministic = not train
        num_patches = arch.grid_size**2
        cls_token = self.param("cls_token", trunc_normal, (1, 1, arch.embed_dim))
        patch_pos = self.param("patch_pos", trunc_normal, (1, num_patches + 1, arch.embed_dim))
        pixel_pos = self.param("pixel_pos", trunc_normal, (1, arch.patch_size, arch.in_dim))

        pixel_embed = PixelEmbed(arch, self.dtype, name="pixel_embed")(images.astype(self.dtype))
        pixel_embed = pixel_embed + pixel_pos.astype(pixel_embed.dtype)
        batch = pixel_embed.shape[0]

        patch_embed = pixel_embed.reshape(batch, num_patches, arch.num_pixel * arch.in_dim)
        patch_embed = layer_norm(eps, "norm1_proj", self.dtype)(patch_embed)
        patch_embed = dense(arch.embed_dim, "proj", dtype=self.dtype, matmul=self.matmul)(patch_embed)
        patch_embed = layer_norm(eps, "norm2_proj", self.dtype)(patch_embed)
        cls = jnp.broadcast_to(cls_token, (batch, 1, arch.embed_dim)).astype(patch_embed.dtype)
        patch_embed = jnp.concatenate([cls, patch_embed], axis=1) + patch_pos.astype(patch_embed.dtype)
        patch_embed = nn.Dropout(self.drop_rate)(patch_embed, deterministic=deterministic)

        rates = np.linspace(0.0, self.drop_path_rate, arch.depth)
        for i in range(arch.depth if num_blocks is None else num_blocks):
            pixel_embed, patch_embed = Block(
                arch, self.drop_rate, self.attn_drop_rate, float(rates[i]), self.dtype, self.matmul, name=f"blocks_{i}"
            )(pixel_embed, patch_embed, deterministic)
            self.sow("intermediates", "blocks", patch_embed)
            self.sow("intermediates", "inner_blocks", pixel_embed)
        if num_blocks is not None:
            return patch_embed

        normed = layer_norm(eps, "norm", self.dtype)(patch_embed)
        self.sow("intermediates", "features", normed)
        features = normed[:, 0]
        self.sow("intermediates", "pre_logits", features)
        if self.num_classes <= 0:
            return features
        return dense(self.num_classes, "head", dtype=self.dtype, matmul=self.matmul)(features)
