"""Our FLOP counter against paddle.flops()'s own counting rules, run on the Paddle mirror."""

import numpy as np
import paddle
import pytest

import vitjax
from vitjax.models.complexity import count


@pytest.mark.parametrize("name", ["DeiT_tiny_distilled_patch16_224", "TNT_small"])
def test_flop_counter_agrees_with_paddle_flops_rules_on_the_mirror(name):
    """Our count equals paddle.flops()'s own per-layer rules run on the Paddle mirror.

    (paddle.flops() itself fails under numpy 2 when printing its table, so we attach
    its counting hooks, ``paddle.hapi.dynamic_flops.register_hooks``, ourselves.)
    """
    from paddle.hapi.dynamic_flops import register_hooks

    from interop.paddle_models import build_paddle_model

    layer = build_paddle_model(name)
    counted = []
    for sub in layer.sublayers():
        if not list(sub.children()) and type(sub) in register_hooks:
            sub.total_ops = 0
            sub.register_forward_post_hook(register_hooks[type(sub)])
            counted.append(sub)
    size = vitjax.get_spec(name).img_size
    with paddle.no_grad():
        layer(paddle.zeros([1, 3, size, size]))
    leaf_params = sum(
        int(np.prod(p.shape)) for sub in layer.sublayers() if not list(sub.children()) for p in sub.parameters()
    )
    c = count(name)
    assert c.flops_paddle == sum(int(sub.total_ops) for sub in counted)
    assert c.params_paddle == leaf_params
