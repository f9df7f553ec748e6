"""DeiT_tiny_distilled_patch16_224 on ImageNet with PaddleClas's DeiT recipe (two heads; add a teacher with --config.distill.teacher=...)."""

from vitjax.training.config import imagenet_config


def get_config(arg=None):
    return imagenet_config("DeiT_tiny_distilled_patch16_224")
