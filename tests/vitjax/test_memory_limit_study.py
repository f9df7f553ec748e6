"""``benchmarks.studies.memory_limit`` reads sizes, variants and a process's memory as it says."""

import argparse
import os
import subprocess
import sys

import pytest

from benchmarks.input_loop import parse_variants
from benchmarks.studies.memory_limit import DEFAULT_VARIANTS, _memory, markdown, parse_size


def test_sizes_are_read_in_binary_units():
    assert parse_size("5GiB") == parse_size("5G") == parse_size("5g") == 5 * 2**30
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("0") == 0 and parse_size("1.5G") == 3 * 2**29
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size("five gigs")


def test_variants_name_their_environment():
    assert parse_variants(DEFAULT_VARIANTS) == [("vitjax.main", {}), ("kept", {"MIMALLOC_PURGE_DELAY": "-1"})]
    assert parse_variants("a=X:1+Y:2") == [("a", {"X": "1", "Y": "2"})]  # benchmarks.input_loop's syntax


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux's /proc")
def test_a_processs_memory_is_its_resident_size_and_what_the_kernel_may_take_back():
    rss, lazy = _memory(os.getpid())
    assert 10 * 2**20 < rss < 64 * 2**30 and 0 <= lazy <= rss
    assert _memory(2**22 + 12345) is None  # no such process


def test_the_table_says_which_run_was_killed_and_which_memory_was_reclaimable():
    run = dict(returncode=0, killed=False, steps_done=24, steps_per_s_settled=0.52, max_rss=8 * 2**30)
    run.update(max_rss_not_reclaimable=3 * 2**30, max_lazy_free=5 * 2**30, environment={}, allocator="mimalloc")
    killed = {**run, "returncode": -9, "killed": True, "steps_done": 2, "environment": {"MIMALLOC_PURGE_DELAY": "-1"}}
    report = dict(date="d", cpu="c", commit="x", command="cmd", limit=5 * 2**30, batch=32, steps=24)
    text = markdown({**report, "variants": {"vitjax.main": run, "kept": killed}})
    assert "memory cgroup of 5.0 GiB" in text
    assert "| vitjax.main | `(as it comes)` | mimalloc | finished | 24 | 0.52 | 8.0 GiB | 3.0 GiB | 5.0 GiB |" in text
    assert "| kept | `MIMALLOC_PURGE_DELAY=-1` | mimalloc | killed (out of memory) | 2 | 0.52 |" in text


def test_a_run_in_the_cgroup_is_held_to_its_limit_and_the_cgroup_is_removed():
    from benchmarks.studies.memory_limit import MemoryCgroup

    try:
        cgroup = MemoryCgroup(64 * 2**20, f"vitjax_test_{os.getpid()}")
    except SystemExit as e:
        pytest.skip(str(e))
    try:
        touch = "import sys; b = bytearray(int(sys.argv[1]) << 20); print(len(b))"

        def run(megabytes: int) -> int:
            command = [sys.executable, "-c", touch, str(megabytes)]
            return subprocess.run(command, preexec_fn=cgroup.join, capture_output=True, timeout=60).returncode

        assert run(8) == 0
        assert run(256) == -9  # killed for lack of memory, as a run that outgrows --limit is
    finally:
        cgroup.remove()
    assert not cgroup.path.exists()
