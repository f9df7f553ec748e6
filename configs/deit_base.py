"""DeiT_base_patch16_224 on ImageNet with PaddleClas's DeiT recipe."""

from vitjax.training.config import imagenet_config


def get_config(arg=None):
    return imagenet_config("DeiT_base_patch16_224")
