"""vitjax: PaddleClas's DeiT and TNT vision transformers in JAX/Flax."""

from vitjax.hostmem import keep_freed_memory
from vitjax.models import (
    EvalTransform,
    Intermediates,
    ModelSpec,
    attention_rollout,
    class_token_rollout,
    create_model,
    forward_intermediates,
    get_spec,
    list_models,
)
from vitjax.models.posemb import resize_position_embeddings
from vitjax.weights import load_pdparams, load_pretrained, save_pdparams

__version__ = "0.1.0"

__all__ = [
    "EvalTransform",
    "Intermediates",
    "ModelSpec",
    "attention_rollout",
    "class_token_rollout",
    "create_model",
    "forward_intermediates",
    "get_spec",
    "keep_freed_memory",
    "list_models",
    "load_pdparams",
    "load_pretrained",
    "resize_position_embeddings",
    "save_pdparams",
]
