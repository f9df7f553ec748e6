"""``python -m vitjax.main --config configs/deit_base.py --workdir DIR [--config.x=y ...]``

Modes (``--config.mode``): ``train`` (default; resumes from the workdir's checkpoints),
``eval`` (top-1/top-5 of init.pdparams / init.checkpoint / the workdir's latest weights)
``predict`` (top-k classes of ``--config.predict.images=a.jpg,b.jpg``) and ``explain`` (per image of
``predict.images``, a PNG in ``<workdir>/explain/`` with the attention rollout and the top-k classes).
Without ``--config`` the embedded default trains a small DeiT on scikit-learn's digits.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from vitjax.hostmem import keep_freed_memory, preload_allocator

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "training" / "default_config.py")

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "a Python config file (configs/*.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and plots go", required=True)


def initialize_distributed(dist_config) -> None:
    """Multi-host set-up through ``jax.distributed``; CPU hosts talk over gloo."""
    import jax

    if dist_config.coordinator_address or "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=dist_config.coordinator_address or None,
            num_processes=dist_config.num_processes if dist_config.coordinator_address else None,
            process_id=dist_config.process_id if dist_config.coordinator_address else None,
        )


def main(argv) -> int:
    del argv
    keep_freed_memory()  # without the preload (VITJAX_MALLOC=keep, a GPU host, ...): glibc keeps freed buffers
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    config = flags.FLAGS.config
    initialize_distributed(config.distributed)

    from vitjax import explain
    from vitjax.training import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", force=True)
    for noisy in ("absl", "orbax", "jax", "tensorflow"):  # keep the progress lines readable
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir = flags.FLAGS.workdir
    modes = {
        "train": train.train_and_evaluate,
        "eval": train.evaluate,
        "predict": train.predict,
        "explain": explain.explain,
    }
    if config.mode not in modes:
        raise app.UsageError(f"--config.mode must be one of {sorted(modes)}, not {config.mode!r}")
    try:
        modes[config.mode](config, workdir)
    except train.Preempted as e:
        return e.code
    except (ValueError, FloatingPointError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    preload_allocator()  # on a CPU host, start again once with mimalloc preloaded (vitjax.hostmem)
    app.run(main)
