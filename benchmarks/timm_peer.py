"""timm (PyTorch) running our models on our weights: a third implementation and a speed peer.

timm builds DeiT and TNT under its own names (``deit_tiny_patch16_224``, ``tnt_s_patch16_224``)
with the same parameter names as PaddleClas, so our variables go to timm through PaddleClas's
``state_dict`` (``vitjax.variables_to_state_dict``) and three layout changes:

* ``Linear.weight``: Paddle stores ``[in, out]``, PyTorch ``[out, in]`` (transposed);
* ``Conv2D.weight``: ``[out, in, kh, kw]`` on both sides (unchanged);
* TNT's ``pixel_pos``: PaddleClas adds ``[1, words, in_dim]`` to the words of every patch
  (words in row-major order over the 4x4 grid); timm adds ``[1, in_dim, 4, 4]`` to the
  pixel-embedding feature map before flattening it the same way, so word ``4 i + j``, channel
  ``c`` is timm's ``[0, c, i, j]``.

With these, timm's non-legacy TNT computes PaddleClas's function: each 16x16 patch is unfolded
and convolved on its own (7x7, stride 4, zero padding at the patch border), LayerNorm eps 1e-5,
``norm1_proj -> proj (no bias) -> norm2_proj`` inside every block, and ``norm1_proj -> proj ->
norm2_proj`` before the first. timm's DeiT adds ``pos_embed`` after concatenating the class
(and distillation) token, with LayerNorm eps 1e-6 and exact GELU, as PaddleClas does; its
distilled model returns the average of both heads in eval mode.

torch and timm come from the optional ``bench`` extra; this module imports them lazily.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitjax.models.registry import get_spec
from vitjax.weights.convert import variables_to_state_dict

TIMM_NAMES = {
    "DeiT_tiny_patch16_224": "deit_tiny_patch16_224",
    "DeiT_small_patch16_224": "deit_small_patch16_224",
    "DeiT_base_patch16_224": "deit_base_patch16_224",
    "DeiT_base_patch16_384": "deit_base_patch16_384",
    "DeiT_tiny_distilled_patch16_224": "deit_tiny_distilled_patch16_224",
    "DeiT_small_distilled_patch16_224": "deit_small_distilled_patch16_224",
    "DeiT_base_distilled_patch16_224": "deit_base_distilled_patch16_224",
    "DeiT_base_distilled_patch16_384": "deit_base_distilled_patch16_384",
    "TNT_small": "tnt_s_patch16_224",
    "TNT_base": "tnt_b_patch16_224",
}


def timm_name(model_name: str) -> str:
    """timm's registered name for one of our models; a clear error for the ones timm lacks."""
    if model_name not in TIMM_NAMES:
        raise ValueError(f"{model_name!r} has no timm counterpart (known: {', '.join(TIMM_NAMES)})")
    return TIMM_NAMES[model_name]


def paddle_to_timm_state(state: Mapping[str, np.ndarray], model_name: str) -> OrderedDict[str, np.ndarray]:
    """A PaddleClas ``state_dict`` of ``model_name`` in timm's layouts (same keys), as numpy arrays."""
    spec = get_spec(model_name)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, array in state.items():
        array = np.asarray(array)
        if key == "pixel_pos":
            side = spec.arch.new_patch_size
            array = array.reshape(side * side, spec.arch.in_dim).T.reshape(1, spec.arch.in_dim, side, side)
        elif key.endswith(".weight") and array.ndim == 2:  # a Linear: [in, out] -> [out, in]
            array = array.T
        out[key] = np.ascontiguousarray(array)
    return out


def variables_to_timm_state(variables: Mapping[str, Any], model_name: str) -> OrderedDict[str, np.ndarray]:
    """Our Flax variables as timm's ``state_dict`` for ``timm_name(model_name)`` (numpy arrays)."""
    return paddle_to_timm_state(variables_to_state_dict(variables, model_name), model_name)


def create_timm_model(model_name: str, variables: Mapping[str, Any]):
    """timm's model for ``model_name`` with our variables loaded (strict), in eval mode, no dropout.

    Raises ``ValueError`` if timm's parameters and ours differ in any key or shape.
    """
    import timm

    state = variables_to_timm_state(variables, model_name)
    num_classes = state["head.bias"].shape[0] if "head.bias" in state else 0
    model = timm.create_model(timm_name(model_name), pretrained=False, num_classes=num_classes)
    return _load_strict(model, state, f"{model_name} -> timm {timm_name(model_name)}")


def create_timm_model_like(model_name: str, variables: Mapping[str, Any]):
    """timm's DeiT or TNT class built with the hyper-parameters of any registered model (the
    test-size variants included, which timm has no name for), our variables loaded strictly,
    in eval mode. For the PaddleClas models it builds what :func:`create_timm_model` builds."""
    import timm

    spec = get_spec(model_name)
    arch = spec.arch
    state = variables_to_timm_state(variables, model_name)
    num_classes = state["head.bias"].shape[0] if "head.bias" in state else 0
    common = dict(img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim, depth=arch.depth)
    if spec.family == "deit":
        base = "deit_tiny_distilled_patch16_224" if arch.distilled else "deit_tiny_patch16_224"
        model = timm.create_model(base, pretrained=False, num_classes=num_classes, num_heads=arch.num_heads, **common)
    else:
        model = timm.create_model(
            "tnt_s_patch16_224",
            pretrained=False,
            num_classes=num_classes,
            inner_dim=arch.in_dim,
            num_heads_outer=arch.num_heads,
            num_heads_inner=arch.in_num_heads,
            first_stride=arch.first_stride,
            **common,
        )
    return _load_strict(model, state, f"{model_name} -> timm {type(model).__name__}")


def _load_strict(model, state: Mapping[str, np.ndarray], label: str):
    import torch

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [k for k in state if k in expected and tuple(expected[k].shape) != state[k].shape]
    if missing or unexpected or misshaped:
        raise ValueError(f"{label}: missing {missing[:5]}, unexpected {unexpected[:5]}, misshaped {misshaped[:5]}")
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return model.eval()
