"""The embedded default (``vitjax/training/default_config.py``): a small DeiT on scikit-learn's digits."""

from vitjax.training.default_config import get_config  # noqa: F401
