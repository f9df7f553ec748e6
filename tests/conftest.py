"""Shared set-up for both test trees: 8 host devices for the sharding tests, and small helpers.

``tests/vitjax`` is the core (no Paddle); ``tests/interop`` imports Paddle first in its own
conftest. ``make test`` runs them as two pytest processes, so TensorFlow (tfds, clu) and
Paddle never share an interpreter (Paddle segfaults when imported after TensorFlow).
"""

import os
from pathlib import Path

import pytest

# Must be set before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "2")


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An empty pretrained-weights cache (``$VITJAX_CACHE``); no mirror, not offline. Returns
    the directory PaddleClas files land in."""
    monkeypatch.setenv("VITJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VITJAX_WEIGHTS_URL", raising=False)
    monkeypatch.delenv("VITJAX_OFFLINE", raising=False)
    return tmp_path / "cache" / "paddleclas"
