"""XLA's CPU worker threads are found by name and can be pinned one per core, and freed again."""

import os
import sys
import threading
from collections import Counter

import jax
import jax.numpy as jnp
import pytest

from vitjax.cpu_threads import (
    XLA_WORKER_THREAD_NAME,
    pin_xla_worker_threads,
    process_cpus,
    unpin_xla_worker_threads,
    xla_worker_threads,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread affinity through /proc is Linux's")


def _run_a_computation():
    x = jnp.ones((256, 256))
    jax.block_until_ready(jax.jit(lambda a: a @ a)(x))


def test_workers_are_read_by_thread_name(tmp_path):
    for tid, name in (
        (10, "python"),
        (12, XLA_WORKER_THREAD_NAME),
        (11, XLA_WORKER_THREAD_NAME),
        (13, "tf_XLACompile"),
    ):
        (tmp_path / str(tid)).mkdir()
        (tmp_path / str(tid) / "comm").write_text(name + "\n")
    assert xla_worker_threads(tmp_path) == [11, 12]
    assert xla_worker_threads(tmp_path / "missing") == []


@linux_only
def test_this_process_has_xla_workers_once_a_computation_has_run():
    _run_a_computation()
    workers = xla_worker_threads()
    assert workers, "no tf_XLAEigen thread after a jitted computation"
    assert set(workers) <= {int(t) for t in os.listdir("/proc/self/task")}
    assert os.getpid() not in workers  # the main thread is not a worker


@linux_only
def test_pinning_gives_each_worker_one_cpu_round_robin_and_unpinning_frees_them():
    _run_a_computation()
    cpus, main_mask = process_cpus(), os.sched_getaffinity(0)
    try:
        pinned = pin_xla_worker_threads()
        assert set(pinned) == set(xla_worker_threads())
        for tid, cpu in pinned.items():
            assert os.sched_getaffinity(tid) == {cpu} and cpu in cpus
        load = Counter(pinned.values())
        assert max(load.values()) - min(load.values()) <= 1
        assert len(load) == min(len(cpus), len(pinned))  # as many cores used as there are workers (or cores)
        assert os.sched_getaffinity(0) == main_mask  # only the workers were pinned

        one = pin_xla_worker_threads([cpus[-1]])
        assert set(one.values()) == {cpus[-1]} and all(os.sched_getaffinity(t) == {cpus[-1]} for t in one)
        _run_a_computation()  # computations still run with pinned workers
    finally:
        unpin_xla_worker_threads()
    assert all(os.sched_getaffinity(t) == set(cpus) for t in xla_worker_threads())


@linux_only
def test_a_pinned_caller_still_spreads_the_workers_over_the_process_cpus():
    _run_a_computation()
    cpus = process_cpus()
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    seen = {}

    def from_a_thread_pinned_to_one_cpu():
        os.sched_setaffinity(0, {cpus[0]})  # 0: this (calling) thread
        seen["pinned"] = pin_xla_worker_threads()

    caller = threading.Thread(target=from_a_thread_pinned_to_one_cpu)
    try:
        caller.start()
        caller.join()
        assert len(set(seen["pinned"].values())) == min(len(cpus), len(seen["pinned"])) > 1
    finally:
        unpin_xla_worker_threads()


def test_pinning_to_no_cpu_is_refused():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no thread affinity on this platform")
    with pytest.raises(ValueError, match="no CPUs"):
        pin_xla_worker_threads([])


@linux_only
def test_the_pinning_benchmark_times_every_condition_and_leaves_the_workers_free():
    from benchmarks.studies.thread_pinning import CONDITIONS, time_conditions

    x = jnp.ones((128, 128))
    matmul = jax.jit(lambda a: a @ a)
    calls = []

    def predict():
        calls.append(tuple(sorted(os.sched_getaffinity(t)) for t in xla_worker_threads()))
        jax.block_until_ready(matmul(x))

    medians = time_conditions(predict, rounds=4, gap_s=0.01)
    assert set(medians) == set(CONDITIONS) and all(t > 0 for t in medians.values())
    assert len(calls) == 4 * (len(CONDITIONS) + 2)  # back-to-back conditions call once untimed first
    assert any(all(len(cpus) == 1 for cpus in call) for call in calls)  # some calls ran pinned
    assert any(all(len(cpus) == len(process_cpus()) for cpus in call) for call in calls)  # and some free
    assert all(os.sched_getaffinity(t) == set(process_cpus()) for t in xla_worker_threads())
