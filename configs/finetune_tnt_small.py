"""Fine-tunes TNT_small from PaddleClas's ImageNet weights on an image folder (docs/finetuning.md).

    python -m vitjax.main --config configs/finetune_tnt_small.py:NUM_CLASSES --workdir runs/ft_tnt \\
        --config.data.root=/data/flowers

``data.root`` holds ``train/<class>/*.jpg`` and ``val/<class>/*.jpg``; ``NUM_CLASSES`` is the number
of class folders. A batch of 512 in 16 micro-batches of 32 (``accum_steps``); halve
``accum_steps`` on an accelerator with twice the memory, or add ``--config.model.dtype=bfloat16``.
"""

from vitjax.training.config import finetune_config


def get_config(arg=None):
    return finetune_config("TNT_small", accum_steps=16, num_classes=int(arg) if arg else None)
