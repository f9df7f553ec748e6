"""The model zoo: DeiT and TNT under PaddleClas's names."""

from vitjax.models.deit import DeiT, DeiTArch
from vitjax.models.features import (
    Intermediates,
    attention_rollout,
    class_token_rollout,
    forward_intermediates,
)
from vitjax.models.registry import EvalTransform, ModelSpec, create_model, get_spec, list_models
from vitjax.models.tnt import TNT, TNTArch

__all__ = [
    "DeiT",
    "DeiTArch",
    "EvalTransform",
    "Intermediates",
    "ModelSpec",
    "TNT",
    "TNTArch",
    "attention_rollout",
    "class_token_rollout",
    "create_model",
    "forward_intermediates",
    "get_spec",
    "list_models",
]
