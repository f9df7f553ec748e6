"""The model zoo: DeiT and TNT under PaddleClas's names."""

from vitjax.models.deit import DeiT, DeiTArch
from vitjax.models.registry import EvalTransform, ModelSpec, create_model, get_spec, list_models
from vitjax.models.tnt import TNT, TNTArch

__all__ = [
    "DeiT",
    "DeiTArch",
    "EvalTransform",
    "ModelSpec",
    "TNT",
    "TNTArch",
    "create_model",
    "get_spec",
    "list_models",
]
