"""Parameter and FLOP counts, computed from our modules the way PaddleClas counts them.

PaddleClas's tables come from ``paddle.flops``: it hooks every *leaf* layer, counts the
parameters of those layers (so parameters owned directly by the model, such as
``pos_embed`` and ``cls_token``, are left out) and counts multiply-accumulates of
``Linear`` (in_features x output elements) and ``Conv2D`` (output elements x
(in_channels x kh x kw + bias)) layers only: the attention matmuls count as zero.

We trace the model abstractly (``jax.eval_shape``, no arithmetic) with a Flax method
interceptor that sees every Dense/Conv call and every attention call.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models import deit, tnt
from vitjax.models.registry import create_model

_ATTENTION_MODULES = (deit.Attention, tnt.Attention)


@dataclasses.dataclass(frozen=True)
class Complexity:
    name: str
    params: int  # all parameters
    params_paddle: int  # parameters of leaf layers, as paddle.flops counts them
    flops_paddle: int  # Linear + Conv MACs, as paddle.flops counts them
    attention_macs: int  # q @ k^T and weights @ v

    @property
    def total_macs(self) -> int:
        return self.flops_paddle + self.attention_macs


def count(name: str, batch_size: int = 1, **create_kwargs) -> Complexity:
    model = create_model(name, **create_kwargs)
    size = model.arch.img_size
    images = jax.ShapeDtypeStruct((batch_size, size, size, model.arch.in_chans), jnp.float32)
    counts = {"linear_conv": 0, "attention": 0}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__":
            return out
        if isinstance(module, nn.Dense):
            counts["linear_conv"] += args[0].shape[-1] * math.prod(out.shape)
        elif isinstance(module, nn.Conv):
            in_channels = args[0].shape[-1]
            per_output = in_channels * math.prod(module.kernel_size) + (1 if module.use_bias else 0)
            counts["linear_conv"] += math.prod(out.shape) * per_output
        elif isinstance(module, _ATTENTION_MODULES):
            tokens, dim = args[0].shape[-2:]
            samples = math.prod(args[0].shape[:-2])
            counts["attention"] += 2 * samples * tokens * tokens * dim
        return out

    def init(rng, x):
        with nn.intercept_methods(interceptor):
            return model.init(rng, x)

    variables = jax.eval_shape(init, jax.random.key(0), images)
    params = variables["params"]
    total = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
    # Top-level arrays (pos_embed, cls_token, ...) belong to no leaf layer.
    own = sum(math.prod(v.shape) for v in params.values() if not isinstance(v, dict))
    return Complexity(
        name=name,
        params=total,
        params_paddle=total - own,
        flops_paddle=counts["linear_conv"] // batch_size,
        attention_macs=counts["attention"] // batch_size,
    )


def model_table(names: list[str]) -> str:
    """A markdown table of parameters and FLOPs for ``names``."""
    rows = [
        "| Model | Params (M) | FLOPs (G, paddle.flops) | GMACs incl. attention | Params incl. embeddings (M) |",
        "|:--|--:|--:|--:|--:|",
    ]
    for name in names:
        c = count(name)
        rows.append(
            f"| {name} | {c.params_paddle / 1e6:.2f} | {c.flops_paddle / 1e9:.2f} | "
            f"{c.total_macs / 1e9:.2f} | {c.params / 1e6:.2f} |"
        )
    return "\n".join(rows)
