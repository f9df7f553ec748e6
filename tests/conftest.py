"""Shared set-up for both test trees: 8 host devices for the sharding tests, and small helpers.

``tests/vitjax`` is the core (no Paddle); ``tests/interop`` imports Paddle first in its own
conftest. ``make test`` runs them as two pytest processes, so TensorFlow (tfds, clu) and
Paddle never share an interpreter (Paddle segfaults when imported after TensorFlow).
"""

import os

# Must be set before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "2")
