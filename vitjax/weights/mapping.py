"""The one table between PaddleClas ``state_dict`` keys and our Flax parameters.

:func:`key_table` lists, for a registered model, every PaddleClas key in the order
PaddleClas's ``state_dict()`` yields it, with the Flax parameter path it maps to and
how the array is laid out on each side. Everything that moves weights between
PaddleClas and JAX (``.pdparams`` files, inference models, the Paddle mirror) goes
through this table, and nothing here imports Paddle.

Layouts: Paddle's ``Linear.weight`` is ``[in, out]`` like a Flax ``Dense`` kernel;
``Conv2D.weight`` is ``[out, in, kh, kw]`` where Flax wants ``[kh, kw, in, out]``;
``LayerNorm.weight`` is Flax's ``scale``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from vitjax.models.deit import DeiTArch
from vitjax.models.registry import get_spec
from vitjax.models.tnt import TNTArch

FlaxPath = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class KeyRule:
    paddle_key: str
    flax_path: FlaxPath
    kind: str  # "array" (same layout) or "conv" (OIHW <-> HWIO)

    def to_flax(self, array: np.ndarray) -> np.ndarray:
        """The array in Flax's layout; a ``ValueError`` names the key when a conv weight is not 4-D."""
        if self.kind != "conv":
            return array
        if array.ndim != 4:
            raise ValueError(f"{self.paddle_key} has {array.ndim} dimensions; a convolution weight has 4 (OIHW)")
        return np.transpose(array, (2, 3, 1, 0))

    def to_paddle(self, array: np.ndarray) -> np.ndarray:
        return np.transpose(array, (3, 2, 0, 1)) if self.kind == "conv" else array


def _linear(paddle_prefix: str, bias: bool = True) -> Iterator[tuple[str, str, str]]:
    yield f"{paddle_prefix}.weight", "kernel", "array"
    if bias:
        yield f"{paddle_prefix}.bias", "bias", "array"


def _norm(paddle_prefix: str) -> Iterator[tuple[str, str, str]]:
    yield f"{paddle_prefix}.weight", "scale", "array"
    yield f"{paddle_prefix}.bias", "bias", "array"


def _conv(paddle_prefix: str) -> Iterator[tuple[str, str, str]]:
    yield f"{paddle_prefix}.weight", "kernel", "conv"
    yield f"{paddle_prefix}.bias", "bias", "array"


def _deit_keys(arch: DeiTArch, has_head: bool) -> Iterator[tuple[str, str, str]]:
    # Parameters the model owns come first, then sub-layers in creation order.
    yield "pos_embed", "", "array"
    yield "cls_token", "", "array"
    if arch.distilled:
        yield "dist_token", "", "array"
    yield from _conv("patch_embed.proj")
    for i in range(arch.depth):
        b = f"blocks.{i}"
        yield from _norm(f"{b}.norm1")
        yield from _linear(f"{b}.attn.qkv", arch.qkv_bias)
        yield from _linear(f"{b}.attn.proj")
        yield from _norm(f"{b}.norm2")
        yield from _linear(f"{b}.mlp.fc1")
        yield from _linear(f"{b}.mlp.fc2")
    yield from _norm("norm")
    if has_head:
        yield from _linear("head")
        if arch.distilled:
            yield from _linear("head_dist")


def _tnt_keys(arch: TNTArch, has_head: bool) -> Iterator[tuple[str, str, str]]:
    yield "cls_token", "", "array"
    yield "patch_pos", "", "array"
    yield "pixel_pos", "", "array"
    yield from _conv("pixel_embed.proj")
    yield from _norm("norm1_proj")
    yield from _linear("proj")
    yield from _norm("norm2_proj")
    for i in range(arch.depth):
        b = f"blocks.{i}"
        yield from _norm(f"{b}.norm_in")
        yield from _linear(f"{b}.attn_in.qk", arch.qkv_bias)
        yield from _linear(f"{b}.attn_in.v", arch.qkv_bias)
        yield from _linear(f"{b}.attn_in.proj")
        yield from _norm(f"{b}.norm_mlp_in")
        yield from _linear(f"{b}.mlp_in.fc1")
        yield from _linear(f"{b}.mlp_in.fc2")
        yield from _norm(f"{b}.norm1_proj")
        yield from _linear(f"{b}.proj", bias=False)
        yield from _norm(f"{b}.norm2_proj")
        yield from _norm(f"{b}.norm_out")
        yield from _linear(f"{b}.attn_out.qk", arch.qkv_bias)
        yield from _linear(f"{b}.attn_out.v", arch.qkv_bias)
        yield from _linear(f"{b}.attn_out.proj")
        yield from _norm(f"{b}.norm_mlp")
        yield from _linear(f"{b}.mlp.fc1")
        yield from _linear(f"{b}.mlp.fc2")
    yield from _norm("norm")
    if has_head:
        yield from _linear("head")


def _flax_path(paddle_key: str, leaf: str) -> FlaxPath:
    """``blocks.3.attn.qkv.weight`` + ``kernel`` -> ``('blocks_3', 'attn', 'qkv', 'kernel')``."""
    parts = paddle_key.split(".")
    if not leaf:  # a parameter the model owns: same name on both sides
        return tuple(parts)
    modules, out = parts[:-1], []
    for part in modules:
        if part.isdigit():
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return (*out, leaf)


def key_table(model_name: str, has_head: bool = True) -> list[KeyRule]:
    """Every PaddleClas key of ``model_name`` in ``state_dict()`` order, with its Flax path."""
    spec = get_spec(model_name)
    keys = _deit_keys(spec.arch, has_head) if spec.family == "deit" else _tnt_keys(spec.arch, has_head)
    return [KeyRule(key, _flax_path(key, leaf), kind) for key, leaf, kind in keys]


def is_head_key(paddle_key: str) -> bool:
    return paddle_key.split(".")[0] in ("head", "head_dist")
