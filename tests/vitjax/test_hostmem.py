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
