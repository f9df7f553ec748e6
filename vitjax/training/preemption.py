"""Preemption: SIGTERM asks the training loop to save a checkpoint and exit with 143."""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is saved; exits the process with 143."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


class PreemptionWatch:
    """While entered, SIGTERM sets a flag instead of killing the process; :meth:`requested`
    tells the loop, on every process at once, that some process received one. Outside the
    main thread (where signals cannot be caught) it never fires."""

    def __init__(self):
        self._received = False
        self._previous = None

    def __enter__(self) -> PreemptionWatch:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self._received = True

    def requested(self) -> bool:
        """Whether any process has received SIGTERM (all processes agree)."""
        if jax.process_count() > 1:
            return bool(np.any(multihost_utils.process_allgather(np.asarray(self._received))))
        return self._received

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
