"""What the training loop watches between steps without stalling the device: non-finite
losses, and how much of a step went to waiting for input (``data_wait``)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import jax

from vitjax.training.experiment import to_host


class LossCheck:
    """Stops training on a NaN or infinite loss with a ``FloatingPointError`` naming the step.

    :meth:`after_dispatch` reads the loss of the step *before* the one just dispatched:
    the device has usually finished it, and the new step is already queued behind it, so
    the host never holds the device back just to check, and never runs more than one step
    ahead of it (which bounds the batches in flight). :meth:`latest` reads (and checks)
    the newest step's loss; the loop calls it before logging and before saving, so no
    checkpoint holds the parameters of a non-finite step. With ``enabled=False`` the losses
    are read the same way but never raise.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._newest: tuple[int, jax.Array] | None = None

    def after_dispatch(self, step: int, loss: jax.Array) -> None:
        """Records step ``step``'s (not yet computed) loss and checks the previous step's."""
        previous, self._newest = self._newest, (step, loss)
        if previous is not None:
            self._read(*previous)

    def latest(self) -> float:
        """The newest step's loss, checked; waits for that step to finish."""
        if self._newest is None:
            raise RuntimeError("no step has been dispatched yet")
        return self._read(*self._newest)

    def _read(self, step: int, loss: jax.Array) -> float:
        value = float(to_host(loss))
        if self.enabled and not math.isfinite(value):
            raise FloatingPointError(
                f"training loss is {value} at step {step}: stopping (no checkpoint written for this step; "
                f"lower optimizer.base_lr or set optimizer.grad_clip)"
            )
        return value


class InputWaitMeter:
    """``data_wait``: the fraction of step time spent waiting for input since the last reading.

    A step's time is what :meth:`waiting` and :meth:`stepping` enclose: getting the batch on
    the devices (``vitjax.main``'s loader copies each batch there one step ahead, in a thread of
    its own, so this is the time the loop blocks on its input), then dispatching the update and reading the previous
    step's loss (where the host waits for the device), and, on a step that is logged, reading
    its own loss (the host waits for the step to finish: left out, a short ``log_every``
    would count a whole step of every few as neither and inflate the share). Evaluation,
    checkpoints and writing the logs count as neither. Near 0: the model is the bottleneck;
    near 1: the input.
    """

    def __init__(self):
        self._seconds = {"waiting": 0.0, "stepping": 0.0}

    def waiting(self) -> contextlib.AbstractContextManager[None]:
        """Encloses getting the batch on the devices."""
        return self._timed("waiting")

    def stepping(self) -> contextlib.AbstractContextManager[None]:
        """Encloses dispatching the update and reading the previous step's loss, and, on a logged
        step, reading its own."""
        return self._timed("stepping")

    @contextlib.contextmanager
    def _timed(self, kind: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[kind] += time.perf_counter() - start

    def read(self) -> float:
        """The fraction in [0, 1] since the previous call (0 before any step), and resets."""
        waiting, stepping = self._seconds["waiting"], self._seconds["stepping"]
        total = waiting + stepping
        fraction = waiting / total if total > 0 else 0.0
        self._seconds = dict.fromkeys(self._seconds, 0.0)
        return min(max(fraction, 0.0), 1.0)
