"""The embedded default (``vitjax/default_config.py``): a small DeiT on scikit-learn's digits."""

from vitjax.default_config import get_config  # noqa: F401
