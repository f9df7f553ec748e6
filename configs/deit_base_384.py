"""DeiT_base_patch16_384 on ImageNet: PaddleClas's DeiT recipe at 384 pixels."""

from vitjax.training.config import imagenet_config


def get_config(arg=None):
    return imagenet_config("DeiT_base_patch16_384")
