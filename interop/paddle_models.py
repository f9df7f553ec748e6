"""A Paddle (dygraph) mirror of our DeiT and TNT models.

Its ``state_dict()`` has exactly PaddleClas's keys, order and shapes, and its forward
computes what PaddleClas's does, written independently of both PaddleClas and our
Flax code. We use it to export Paddle inference models (it is written to trace
with dynamic batch size under ``paddle.jit.to_static``) and in tests, as a second
implementation to check the Flax models against.

Only inference is mirrored: dropout and stochastic depth are not built.
Input is NCHW float32, as in PaddleClas.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from interop._paddle import require_paddle

require_paddle()

import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

from vitjax.models.deit import DeiTArch  # noqa: E402
from vitjax.models.registry import get_spec  # noqa: E402
from vitjax.models.tnt import TNTArch  # noqa: E402
from vitjax.weights.mapping import key_table  # noqa: E402


def _attention(q, k, v, scale: float):
    """q, k, v: [batch, heads, tokens, head_dim] -> [batch, tokens, heads * head_dim]."""
    weights = F.softmax(paddle.matmul(q, k, transpose_y=True) * scale, axis=-1)
    out = paddle.matmul(weights, v).transpose([0, 2, 1, 3])
    return out.reshape([0, 0, -1])


class _Mlp(nn.Layer):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _DeiTAttention(nn.Layer):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias_attr=None if qkv_bias else False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        qkv = self.qkv(x).reshape([0, 0, 3, self.heads, self.head_dim]).transpose([2, 0, 3, 1, 4])
        return self.proj(_attention(qkv[0], qkv[1], qkv[2], self.head_dim**-0.5))


class _DeiTBlock(nn.Layer):
    def __init__(self, arch: DeiTArch):
        super().__init__()
        d = arch.embed_dim
        self.norm1 = nn.LayerNorm(d, epsilon=arch.epsilon)
        self.attn = _DeiTAttention(d, arch.num_heads, arch.qkv_bias)
        self.norm2 = nn.LayerNorm(d, epsilon=arch.epsilon)
        self.mlp = _Mlp(d, int(d * arch.mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Layer):
    def __init__(self, arch: DeiTArch):
        super().__init__()
        p = arch.patch_size
        self.proj = nn.Conv2D(arch.in_chans, arch.embed_dim, kernel_size=p, stride=p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose([0, 2, 1])


class PaddleDeiT(nn.Layer):
    def __init__(self, arch: DeiTArch, num_classes: int = 1000):
        super().__init__()
        self.arch, self.num_classes = arch, num_classes
        d = arch.embed_dim
        tokens = arch.grid_size**2 + arch.num_prefix_tokens
        self.pos_embed = self.create_parameter(
            [1, tokens, d], default_initializer=nn.initializer.TruncatedNormal(std=0.02)
        )
        self.cls_token = self.create_parameter([1, 1, d], default_initializer=nn.initializer.TruncatedNormal(std=0.02))
        if arch.distilled:
            self.dist_token = self.create_parameter(
                [1, 1, d], default_initializer=nn.initializer.TruncatedNormal(std=0.02)
            )
        self.patch_embed = _PatchEmbed(arch)
        self.blocks = nn.LayerList([_DeiTBlock(arch) for _ in range(arch.depth)])
        self.norm = nn.LayerNorm(d, epsilon=arch.epsilon)
        if num_classes > 0:
            self.head = nn.Linear(d, num_classes)
            if arch.distilled:
                self.head_dist = nn.Linear(d, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        batch = paddle.shape(x)[0]  # a tensor, so exported models keep a dynamic batch
        prefix = [self.cls_token.expand([batch, -1, -1])]
        if self.arch.distilled:
            prefix.append(self.dist_token.expand([batch, -1, -1]))
        x = paddle.concat([*prefix, x], axis=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.num_classes <= 0:
            return x[:, 0] if not self.arch.distilled else (x[:, 0] + x[:, 1]) / 2
        logits = self.head(x[:, 0])
        if self.arch.distilled:
            logits = (logits + self.head_dist(x[:, 1])) / 2
        return logits


class _TNTAttention(nn.Layer):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        bias = None if qkv_bias else False
        self.qk = nn.Linear(dim, 2 * dim, bias_attr=bias)
        self.v = nn.Linear(dim, dim, bias_attr=bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        qk = self.qk(x).reshape([0, 0, 2, self.heads, self.head_dim]).transpose([2, 0, 3, 1, 4])
        v = self.v(x).reshape([0, 0, self.heads, self.head_dim]).transpose([0, 2, 1, 3])
        return self.proj(_attention(qk[0], qk[1], v, self.head_dim**-0.5))


class _TNTBlock(nn.Layer):
    def __init__(self, arch: TNTArch):
        super().__init__()
        e, w, eps = arch.embed_dim, arch.in_dim, arch.epsilon
        words = arch.num_pixel * w
        self.norm_in = nn.LayerNorm(w, epsilon=eps)
        self.attn_in = _TNTAttention(w, arch.in_num_heads, arch.qkv_bias)
        self.norm_mlp_in = nn.LayerNorm(w, epsilon=eps)
        self.mlp_in = _Mlp(w, 4 * w)
        self.norm1_proj = nn.LayerNorm(words, epsilon=eps)
        self.proj = nn.Linear(words, e, bias_attr=False)
        self.norm2_proj = nn.LayerNorm(words, epsilon=eps)
        self.norm_out = nn.LayerNorm(e, epsilon=eps)
        self.attn_out = _TNTAttention(e, arch.num_heads, arch.qkv_bias)
        self.norm_mlp = nn.LayerNorm(e, epsilon=eps)
        self.mlp = _Mlp(e, int(e * arch.mlp_ratio))
        self.words = words

    def forward(self, pixel_embed, patch_embed):
        # pixel_embed: [batch * patches, words, in_dim]; patch_embed: [batch, 1 + patches, embed_dim]
        pixel_embed = pixel_embed + self.attn_in(self.norm_in(pixel_embed))
        pixel_embed = pixel_embed + self.mlp_in(self.norm_mlp_in(pixel_embed))
        words = pixel_embed.reshape([paddle.shape(patch_embed)[0], -1, self.words])
        words = self.norm2_proj(self.proj(self.norm1_proj(words)))
        patch_embed = paddle.concat([patch_embed[:, :1], patch_embed[:, 1:] + words], axis=1)
        patch_embed = patch_embed + self.attn_out(self.norm_out(patch_embed))
        patch_embed = patch_embed + self.mlp(self.norm_mlp(patch_embed))
        return pixel_embed, patch_embed


class _PixelEmbed(nn.Layer):
    def __init__(self, arch: TNTArch):
        super().__init__()
        self.arch = arch
        self.proj = nn.Conv2D(arch.in_chans, arch.in_dim, kernel_size=7, padding=3, stride=arch.first_stride)

    def forward(self, x, pixel_pos):
        a, p = self.arch, self.arch.patch_size
        # [B, C, gh*p, gw*p] -> [B*gh*gw, C, p, p], one image per patch.
        g = a.grid_size
        x = x.reshape([-1, a.in_chans, g, p, g, p]).transpose([0, 2, 4, 1, 3, 5]).reshape([-1, a.in_chans, p, p])
        x = self.proj(x)  # [B*patches, in_dim, s, s]
        x = x.flatten(2).transpose([0, 2, 1])  # [B*patches, words, in_dim]
        return x + pixel_pos


class PaddleTNT(nn.Layer):
    def __init__(self, arch: TNTArch, num_classes: int = 1000):
        super().__init__()
        self.arch, self.num_classes = arch, num_classes
        e = arch.embed_dim
        init = nn.initializer.TruncatedNormal(std=0.02)
        self.cls_token = self.create_parameter([1, 1, e], default_initializer=init)
        self.patch_pos = self.create_parameter([1, arch.grid_size**2 + 1, e], default_initializer=init)
        self.pixel_pos = self.create_parameter([1, arch.patch_size, arch.in_dim], default_initializer=init)
        self.pixel_embed = _PixelEmbed(arch)
        words = arch.num_pixel * arch.in_dim
        self.norm1_proj = nn.LayerNorm(words, epsilon=arch.epsilon)
        self.proj = nn.Linear(words, e)
        self.norm2_proj = nn.LayerNorm(e, epsilon=arch.epsilon)
        self.blocks = nn.LayerList([_TNTBlock(arch) for _ in range(arch.depth)])
        self.norm = nn.LayerNorm(e, epsilon=arch.epsilon)
        if num_classes > 0:
            self.head = nn.Linear(e, num_classes)

    def forward(self, x):
        a = self.arch
        pixel_embed = self.pixel_embed(x, self.pixel_pos)
        patch_embed = pixel_embed.reshape([-1, a.grid_size**2, a.num_pixel * a.in_dim])
        patch_embed = self.norm2_proj(self.proj(self.norm1_proj(patch_embed)))
        cls = self.cls_token.expand([paddle.shape(patch_embed)[0], -1, -1])
        patch_embed = paddle.concat([cls, patch_embed], axis=1) + self.patch_pos
        for block in self.blocks:
            pixel_embed, patch_embed = block(pixel_embed, patch_embed)
        features = self.norm(patch_embed)[:, 0]
        return self.head(features) if self.num_classes > 0 else features


def build_paddle_model(model_name: str, num_classes: int = 1000, img_size: int | None = None) -> nn.Layer:
    """The Paddle mirror of ``model_name`` in eval mode, randomly initialised."""
    spec = get_spec(model_name)
    arch = spec.arch
    if img_size is not None:
        arch = dataclasses.replace(arch, img_size=int(img_size))
    layer = (PaddleDeiT if spec.family == "deit" else PaddleTNT)(arch, num_classes)
    expected = [rule.paddle_key for rule in key_table(model_name, has_head=num_classes > 0)]
    if list(layer.state_dict().keys()) != expected:  # a guard on this file, not on user input
        raise AssertionError(f"Paddle mirror of {model_name} does not match the key table")
    layer.eval()
    return layer


def state_dict_numpy(layer: nn.Layer) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in layer.state_dict().items()}


def load_numpy_state(layer: nn.Layer, state: dict[str, np.ndarray]) -> nn.Layer:
    """Sets ``state`` into ``layer`` strictly: every key, every shape."""
    own = layer.state_dict()
    if set(own) != set(state):
        raise ValueError(
            f"keys differ: missing {sorted(set(own) - set(state))}, unexpected {sorted(set(state) - set(own))}"
        )
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{key}: shape {tuple(value.shape)} != {tuple(own[key].shape)}")
    layer.set_state_dict({k: paddle.to_tensor(np.ascontiguousarray(v)) for k, v in state.items()})
    return layer
