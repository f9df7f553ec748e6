"""TNT_base on ImageNet with PaddleClas's TNT recipe (momentum SGD, piecewise decay, 120 epochs)."""

from vitjax.training.config import imagenet_config


def get_config(arg=None):
    return imagenet_config("TNT_base")
