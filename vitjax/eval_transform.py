"""How an image becomes a model's input: PaddleClas's eval transform, as data.

A model's registry entry carries one (:attr:`vitjax.ModelSpec.eval_transform`), exported files
carry it in their metadata, and :func:`vitjax.data.transforms.preprocess_eval` applies it. It lives
apart from the models so that code that only preprocesses (the server, the deploy predictors) loads
no model code.
"""

from __future__ import annotations

import dataclasses

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """PaddleClas's eval pipeline: resize the short side (PIL), center crop, normalize.

    ``mean``/``std`` apply to pixel values scaled to [0, 1].
    """

    resize_short: int
    crop_size: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
