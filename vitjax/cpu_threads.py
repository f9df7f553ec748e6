"""XLA's CPU worker threads, and pinning them one per core for latency-bound inference.

XLA's CPU backend runs a compiled computation's parallel work on a pool of worker threads
(named ``tf_XLAEigen``, one per core of the process's CPU set), started with JAX's CPU client.
Between requests those threads sleep; when the next request wakes them, Linux tends to place
a woken thread next to the thread that woke it, so both workers often land on the same core
and share it until the load balancer moves one, which takes longer than a whole batch-1
forward pass. Measured on 2 cores (Zen 4), DeiT-tiny at batch 1 with 300 ms between calls:
33-34 ms per call with free threads, 22 ms with each worker pinned to its own core (back to
back, with no idle gaps: 21 ms either way); training steps, which never leave the workers
idle, gain nothing. ONNX Runtime avoids the same cost by spinning its threads between calls.
``python -m benchmarks.studies.thread_pinning`` measures it on another machine.

So inference predictors pin the workers (``interop.deploy.JaxPredictor(pin_threads=True)``),
and training leaves them free. Pinning is process-wide (every JAX computation in the
process shares the pool) and Linux-only; elsewhere these functions find no threads and do
nothing. It never fails a computation: a CPU the kernel refuses (outside the cgroup's CPU set,
say) leaves that thread as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

XLA_WORKER_THREAD_NAME = "tf_XLAEigen"
_TASKS = Path("/proc/self/task")


def xla_worker_threads(tasks: Path = _TASKS) -> list[int]:
    """Thread ids of XLA's CPU worker pool in this process, sorted; ``[]`` before JAX's CPU
    client exists, or where there is no ``/proc`` (not Linux)."""
    try:
        entries = sorted(int(entry.name) for entry in tasks.iterdir())
    except OSError:
        return []
    workers: list[int] = []
    for tid in entries:
        try:
            name = (tasks / str(tid) / "comm").read_text().strip()
        except OSError:  # the thread ended between listing and reading
            continue
        if name.startswith(XLA_WORKER_THREAD_NAME):
            workers.append(tid)
    return workers


def process_cpus() -> list[int]:
    """The CPUs this process may run on, sorted: its main thread's affinity mask (not the calling
    thread's, which may itself be pinned); every CPU where there is no affinity (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return list(range(os.cpu_count() or 1))
    return sorted(os.sched_getaffinity(os.getpid()))


def pin_xla_worker_threads(cpus: Iterable[int] | None = None) -> dict[int, int]:
    """Pins each XLA CPU worker thread to one CPU of ``cpus`` (default: the process's own CPU
    set), round robin, and returns ``{thread id: cpu}`` for the threads it pinned; ``{}`` where
    there are no workers or no thread affinity."""
    if not hasattr(os, "sched_setaffinity"):
        return {}
    cpus = sorted(set(process_cpus() if cpus is None else cpus))
    if not cpus:
        raise ValueError("pin_xla_worker_threads: no CPUs to pin to")
    pinned: dict[int, int] = {}
    for index, tid in enumerate(xla_worker_threads()):
        cpu = cpus[index % len(cpus)]
        try:
            os.sched_setaffinity(tid, {cpu})
        except OSError:  # the thread ended, or the kernel refuses that CPU (EINVAL, EPERM)
            continue
        pinned[tid] = cpu
    return pinned


def unpin_xla_worker_threads() -> None:
    """Lets every XLA CPU worker thread run on any CPU of the process's CPU set again."""
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = set(process_cpus())
    for tid in xla_worker_threads():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue
