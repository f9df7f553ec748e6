"""Orbax checkpoints: model variables on their own, and training state in a workdir.

* A *variables checkpoint* is a directory written by :func:`save_variables`
  (``{'params': ...}``), e.g. weights imported from PaddleClas.
* A *workdir* is what ``python -m vitjax.main`` writes; its checkpoints live in
  ``workdir/checkpoints/<step>/`` under an orbax ``CheckpointManager``.

:func:`load_variables` accepts either and returns ``{'params': ...}`` as numpy arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"


class CheckpointError(ValueError):
    """A path that holds no usable checkpoint."""


def save_variables(path: str | os.PathLike, variables: dict[str, Any]) -> Path:
    """Writes ``{'params': ...}`` as an orbax checkpoint directory (atomically: orbax
    writes to a temporary directory and renames it when complete)."""
    path = Path(path).absolute()
    if path.exists():
        raise CheckpointError(f"{path}: already exists; refusing to overwrite")
    tree = {"params": jax.tree.map(np.asarray, dict(variables["params"]))}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)
        checkpointer.wait_until_finished()
    return path


def is_variables_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a directory that orbax recognises as one checkpoint (asked through
    orbax's own ``is_orbax_checkpoint``, not by probing its file names)."""
    return path.is_dir() and ocp.path.format_utils.is_orbax_checkpoint(path)


def latest_step(workdir: str | os.PathLike) -> int | None:
    directory = Path(workdir).absolute() / CHECKPOINT_DIR
    if not directory.is_dir():
        return None
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
        return manager.latest_step()


def _restore_on_one_device(path: Path) -> Any:
    """Restores any orbax checkpoint onto this process's first device, whatever mesh or
    number of hosts wrote it."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        return checkpointer.restore(path, target)


@contextlib.contextmanager
def _orbax_quiet():
    """Reading a checkpoint, orbax logs warnings that are not ours to act on (a read-only manager
    "setting create=False", an older checkpoint's missing metadata file): keep them out of the way."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def load_variables(path: str | os.PathLike, step: int | None = None, ema: bool = False) -> dict[str, Any]:
    """Model variables from a variables checkpoint or a training workdir (latest step).
    ``ema``: the exponential moving average of the parameters (``ema_params``, written by a run
    with ``ema.decay`` > 0) as ``params``; a :class:`CheckpointError` when the checkpoint has none."""
    with _orbax_quiet():
        return _load_variables(path, step, ema)


def _load_variables(path: str | os.PathLike, step: int | None, ema: bool) -> dict[str, Any]:
    path = Path(path).absolute()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or workdir")
    if (path / CHECKPOINT_DIR).is_dir():
        step = latest_step(path) if step is None else step
        if step is None:
            raise CheckpointError(f"{path}: workdir has no finished checkpoint yet")
        item = path / CHECKPOINT_DIR / str(step) / STATE_ITEM
        if not item.is_dir():
            raise CheckpointError(f"{path}: no checkpoint for step {step}")
        tree = _restore_on_one_device(item)
    elif is_variables_checkpoint(path):
        tree = _restore_on_one_device(path)
    else:
        raise CheckpointError(f"{path}: neither an orbax checkpoint nor a workdir with {CHECKPOINT_DIR}/")
    if "params" not in tree:
        raise CheckpointError(f"{path}: checkpoint has no 'params' entry")
    if ema and tree.get("ema_params") is None:  # older checkpoints lack the key; newer ones store None
        raise CheckpointError(
            f"{path}: checkpoint has no EMA weights (it was trained with ema.decay=0); "
            "use its raw weights (init.use_ema=False) or train with ema.decay > 0"
        )
    return {"params": jax.tree.map(np.asarray, tree["ema_params" if ema else "params"])}


# --- training state in a workdir ------------------------------------------------------------


def checkpoint_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    """The manager of ``workdir/checkpoints``, keeping the latest ``keep`` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(Path(workdir) / CHECKPOINT_DIR, options=options)


def _saved_fields(state: Any) -> dict[str, Any]:
    """A train state (a dataclass) as the dict a checkpoint holds: its fields that are not None,
    so that a run without an EMA (``ema_params=None``) writes and reads the checkpoints written
    before the EMA existed."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if getattr(state, f.name) is not None}


def restore_latest_state(manager: ocp.CheckpointManager, abstract_state: Any, shardings: Any) -> Any | None:
    """The latest saved training state, restored directly into ``shardings`` (whatever mesh
    wrote it), or ``None`` when the workdir has no checkpoint yet."""
    latest = manager.latest_step()
    if latest is None:
        return None
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
    item = Path(manager.directory) / str(latest) / STATE_ITEM
    with ocp.StandardCheckpointer() as checkpointer:
        saved = set(checkpointer.metadata(item).item_metadata.keys())
    if saved != set(_saved_fields(target)):
        raise CheckpointError(
            f"{item.parent}: the checkpoint holds {', '.join(sorted(saved))} but this config trains "
            f"{', '.join(sorted(_saved_fields(target)))} (ema_params exists only with ema.decay > 0): rerun with the "
            "config that wrote it, or start a new workdir with init.checkpoint set to this one"
        )
    restored = manager.restore(
        latest, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(_saved_fields(target))})
    )[STATE_ITEM]
    return type(abstract_state)(**restored)


def save_state(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Saves ``state`` as ``step`` (asynchronously), unless that step is already the latest."""
    if manager.latest_step() != step:
        manager.save(
            step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(_saved_fields(state))}), force=True
        )
