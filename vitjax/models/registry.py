"""The model registry, keyed by PaddleClas's model names.

Each entry records the architecture and the eval transform PaddleClas's config for
that model uses, so a model never travels without its preprocessing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from vitjax.eval_transform import IMAGENET_MEAN, IMAGENET_STD, EvalTransform  # noqa: F401  (importable from here as before)
from vitjax.models.deit import DeiT, DeiTArch
from vitjax.models.tnt import TNT, TNTArch


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "deit" or "tnt"
    arch: DeiTArch | TNTArch
    eval_transform: EvalTransform
    test_size: bool = False  # small variants for fast tests; not PaddleClas models

    @property
    def img_size(self) -> int:
        return self.arch.img_size

    @property
    def distilled(self) -> bool:
        return getattr(self.arch, "distilled", False)


_REGISTRY: dict[str, ModelSpec] = {}

DEIT_EVAL_224 = EvalTransform(resize_short=256, crop_size=224)
DEIT_EVAL_384 = EvalTransform(resize_short=438, crop_size=384)
TNT_EVAL_224 = EvalTransform(resize_short=248, crop_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _deit(name: str, embed_dim: int, heads: int, img_size: int = 224, distilled: bool = False) -> None:
    arch = DeiTArch(embed_dim=embed_dim, depth=12, num_heads=heads, img_size=img_size, distilled=distilled)
    register(ModelSpec(name, "deit", arch, DEIT_EVAL_384 if img_size == 384 else DEIT_EVAL_224))


_deit("DeiT_tiny_patch16_224", 192, 3)
_deit("DeiT_small_patch16_224", 384, 6)
_deit("DeiT_base_patch16_224", 768, 12)
_deit("DeiT_base_patch16_384", 768, 12, img_size=384)
_deit("DeiT_tiny_distilled_patch16_224", 192, 3, distilled=True)
_deit("DeiT_small_distilled_patch16_224", 384, 6, distilled=True)
_deit("DeiT_base_distilled_patch16_224", 768, 12, distilled=True)
_deit("DeiT_base_distilled_patch16_384", 768, 12, img_size=384, distilled=True)
register(ModelSpec("TNT_small", "tnt", TNTArch(embed_dim=384, in_dim=24, depth=12, num_heads=6), TNT_EVAL_224))
register(ModelSpec("TNT_base", "tnt", TNTArch(embed_dim=640, in_dim=40, depth=12, num_heads=10), TNT_EVAL_224))

# Test-size variants: same code paths, a few thousand times less compute.
_TEST_DEIT = dict(embed_dim=64, depth=2, num_heads=4, patch_size=8, img_size=32)
register(ModelSpec("DeiT_test_patch8_32", "deit", DeiTArch(**_TEST_DEIT), EvalTransform(36, 32), test_size=True))
register(
    ModelSpec(
        "DeiT_test_distilled_patch8_32",
        "deit",
        DeiTArch(**_TEST_DEIT, distilled=True),
        EvalTransform(36, 32),
        test_size=True,
    )
)
register(
    ModelSpec(
        "TNT_test_patch16_32",
        "tnt",
        TNTArch(embed_dim=64, in_dim=4, depth=2, num_heads=4, in_num_heads=2, img_size=32),
        dataclasses.replace(TNT_EVAL_224, resize_short=36, crop_size=32),
        test_size=True,
    )
)

_FAMILIES: dict[str, Callable[..., nn.Module]] = {"deit": DeiT, "tnt": TNT}


def list_models(include_test: bool = False) -> list[str]:
    """PaddleClas model names, in registration order (test-size variants on request)."""
    return [name for name, spec in _REGISTRY.items() if include_test or not spec.test_size]


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models(include_test=True))
        raise KeyError(f"unknown model {name!r}; registered models: {known}") from None


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    img_size: int | None = None,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    dtype=jnp.float32,
    matmul: str = "xla",
) -> nn.Module:
    """Builds the Flax (Linen) module registered under ``name``.

    ``img_size`` changes the input resolution (the position embeddings are resized
    when weights are loaded); ``dtype`` is the computation dtype (parameters stay float32);
    ``matmul="onednn"`` runs the dense layers on oneDNN's matmul on the CPU (faster training
    there; :mod:`vitjax.kernels.onednn`), XLA's elsewhere.
    """
    spec = get_spec(name)
    arch = spec.arch if img_size is None else dataclasses.replace(spec.arch, img_size=int(img_size))
    if arch.img_size % arch.patch_size:
        raise ValueError(f"img_size {arch.img_size} is not a multiple of the patch size {arch.patch_size}")
    return _FAMILIES[spec.family](
        arch=arch,
        num_classes=num_classes,
        drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
        dtype=dtype,
        matmul=matmul,
    )
