"""vitjax names the host's malloc, and tells a CPU trainer under glibc how to stop re-faulting XLA's buffers."""

import os
import subprocess
import sys

import pytest

from vitjax.hostmem import allocator_advice, host_allocator, tcmalloc_library


def test_allocator_is_read_from_the_libraries_mapped_into_the_process():
    glibc = "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n7f02-7f03 rw-p 0 0:0 0 [heap]\n"
    assert host_allocator(glibc) == "glibc"
    assert (
        host_allocator(glibc + "7f04-7f05 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
        == "tcmalloc"
    )
    assert host_allocator(glibc + "7f04-7f05 r-xp 0 08:01 2 /opt/lib/libjemalloc.so.2\n") == "jemalloc"
    assert host_allocator() in ("glibc", "tcmalloc", "jemalloc", "mimalloc")


def test_advice_only_for_cpu_training_under_glibc():
    assert allocator_advice("gpu") is None and allocator_advice("tpu") is None
    if host_allocator() == "glibc":
        assert "LD_PRELOAD=" in allocator_advice("cpu")
    else:
        assert allocator_advice("cpu") is None


@pytest.mark.skipif(
    tcmalloc_library() is None or not tcmalloc_library().startswith("/"), reason="tcmalloc is not installed"
)
def test_a_preloaded_tcmalloc_is_seen_and_silences_the_advice():
    env = dict(os.environ, LD_PRELOAD=tcmalloc_library())
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from vitjax.hostmem import allocator_advice, host_allocator;"
            "print(host_allocator(), allocator_advice('cpu'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["tcmalloc", "None"]


FAULTS = """
import resource, sys, threading
import numpy as np
from vitjax.hostmem import allocator_advice, keep_freed_memory
applied = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counted = {}
def step():  # on a worker thread, as XLA allocates its step buffer
    block = np.ones(256 << 20, np.uint8)
    del block
    before = faults()
    block = np.ones(256 << 20, np.uint8)  # the same size again, as the next step's buffer is
    counted["faults"] = faults() - before
worker = threading.Thread(target=step)
worker.start()
worker.join()
print(applied, counted["faults"], allocator_advice("cpu") is None)
"""


def _second_block_faults(setting: str) -> tuple[bool, int, bool]:
    env = dict(os.environ, VITJAX_MALLOC=setting)
    env.pop("LD_PRELOAD", None)
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    applied, faults, no_advice = out.stdout.split()
    return applied == "True", int(faults), no_advice == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux's")
def test_keep_freed_memory_lets_a_freed_block_be_reused_without_page_faults():
    applied, kept_faults, no_advice = _second_block_faults("keep")
    system_applied, system_faults, system_no_advice = _second_block_faults("system")
    if host_allocator() != "glibc":
        pytest.skip(f"this process runs on {host_allocator()}, not glibc")
    assert applied and not system_applied
    # Under glibc as it comes, a 256 MB block is a fresh mmap every time: every page faults again
    # (4 KiB pages or 2 MiB transparent huge pages); kept, the second block reuses the first's pages.
    assert system_faults >= 50 and kept_faults <= system_faults // 20, (kept_faults, system_faults)
    assert no_advice and not system_no_advice  # the LD_PRELOAD hint is for glibc left as it comes
