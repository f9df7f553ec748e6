"""vitjax names the host's malloc, and tells a CPU trainer under glibc how to stop re-faulting XLA's buffers."""

import os
import subprocess
import sys

import pytest

from vitjax.hostmem import (
    MIMALLOC_SETTINGS,
    allocator_advice,
    host_allocator,
    mimalloc_library,
    preload_plan,
    tcmalloc_library,
)


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


# --- mimalloc, preloaded by the entry points ---------------------------------------------------------------

needs_mimalloc = pytest.mark.skipif(
    mimalloc_library() is None or not sys.platform.startswith("linux"), reason="cmeel-mimalloc is not installed"
)


def test_the_preload_plan_puts_mimalloc_first_and_keeps_what_the_user_set():
    base = {"JAX_PLATFORMS": "cpu", "LD_PRELOAD": "/opt/libother.so", "MIMALLOC_PURGE_DELAY": "100"}
    plan = preload_plan(base, library="/x/libmimalloc.so")
    if host_allocator() != "glibc":
        assert plan is None  # another allocator is in charge already: nothing to do
        return
    assert plan["LD_PRELOAD"] == "/x/libmimalloc.so /opt/libother.so"
    assert plan["MIMALLOC_PURGE_DELAY"] == "100"  # the user's own setting wins
    assert plan["MIMALLOC_ARENA_MAX_OBJECT_SIZE"] == "64GiB"  # a multi-GB step buffer is kept in an arena too
    assert plan["MIMALLOC_PURGE_DECOMMITS"] == "0"  # memory handed back lazily (MADV_FREE): reclaimable, no faults
    assert base["LD_PRELOAD"] == "/opt/libother.so"  # the caller's mapping is not changed
    # Each way out: the user chose glibc, the program was started again already, an accelerator host.
    assert preload_plan({**base, "VITJAX_MALLOC": "keep"}, library="/x/libmimalloc.so") is None
    assert preload_plan({**base, "VITJAX_MALLOC": "system"}, library="/x/libmimalloc.so") is None
    assert preload_plan(plan, library="/x/libmimalloc.so") is None
    assert preload_plan({**base, "JAX_PLATFORMS": "cuda"}, library="/x/libmimalloc.so") is None
    assert preload_plan({**base, "JAX_PLATFORMS": "cuda", "VITJAX_MALLOC": "mimalloc"}, library="/x/l.so") is not None


STARTED_AGAIN = """
import os, sys
from vitjax.hostmem import allocator_summary, host_allocator, preload_allocator
print("started", flush=True)
preload_allocator()
print(host_allocator(), repr(os.environ.get("LD_PRELOAD")), sys.argv[1:], allocator_summary(), sep="|")
"""


@needs_mimalloc
@pytest.mark.parametrize("setting", ["auto", "keep"])
def test_an_entry_point_starts_again_once_on_mimalloc_with_its_arguments(tmp_path, setting):
    script = tmp_path / "entry.py"
    script.write_text(STARTED_AGAIN)
    env = dict(os.environ, JAX_PLATFORMS="cpu", VITJAX_MALLOC=setting)
    env.pop("LD_PRELOAD", None)
    out = subprocess.run(
        [sys.executable, str(script), "--flag", "a b"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    allocator, preload, argv, summary = lines[-1].split("|")
    assert argv == "['--flag', 'a b']"  # the same program, with the same arguments
    if setting == "keep":
        assert lines.count("started") == 1 and allocator == "glibc"
        return
    assert lines.count("started") == 2  # started again exactly once
    assert allocator == "mimalloc" and "preloaded by vitjax" in summary
    assert preload == "None"  # the programs it starts get the caller's LD_PRELOAD (none) back


@needs_mimalloc
def test_mimalloc_as_preloaded_reuses_a_freed_block_without_page_faults():
    env = dict(os.environ, LD_PRELOAD=mimalloc_library(), VITJAX_MALLOC="system", **MIMALLOC_SETTINGS)
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    _, kept_faults, _ = out.stdout.split()
    _, system_faults, _ = _second_block_faults("system")
    assert system_faults >= 50 and int(kept_faults) <= system_faults // 20, (kept_faults, system_faults)


LAZY = """
import re, resource, sys, time
from pathlib import Path
import numpy as np
def lazy_free():
    return int(re.search(r"LazyFree:\\s+(\\d+) kB", Path("/proc/self/smaps_rollup").read_text())[1]) << 10
block = np.ones(256 << 20, np.uint8)
del block
deadline = time.monotonic() + float(sys.argv[1])
while lazy_free() < 200 << 20 and time.monotonic() < deadline:  # a process that goes on
    time.sleep(0.1)  # allocating a little while the block stays free
    small = np.ones(1 << 20, np.uint8)
handed_back = lazy_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(256 << 20, np.uint8)
print(handed_back, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, lazy_free())
"""


def _lazy_free(wait: float, **settings: str) -> tuple[int, int, int]:
    """(LazyFree once the freed block was handed back or ``wait`` s passed, faults allocating it
    again, LazyFree after)."""
    env = dict(os.environ, LD_PRELOAD=mimalloc_library(), VITJAX_MALLOC="system", **settings)
    command = [sys.executable, "-c", LAZY, str(wait)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    handed_back, faults, after = map(int, out.stdout.split())
    return handed_back, faults, after


@needs_mimalloc
@pytest.mark.skipif(
    not os.path.exists("/proc/self/smaps_rollup") or "LazyFree" not in open("/proc/self/smaps_rollup").read(),
    reason="the kernel does not report LazyFree",
)
def test_mimalloc_as_preloaded_hands_memory_idle_for_a_second_back_to_the_kernel_lazily():
    """Freed memory idle for a second is ``MADV_FREE``'d: the kernel may take it back under
    pressure (the process is not killed for it), and until it does, reusing it faults nothing.
    Kept resident (``MIMALLOC_PURGE_DELAY=-1``, the setting before), nothing is handed back."""
    handed_back, faults, after = _lazy_free(15, **MIMALLOC_SETTINGS)
    assert handed_back >= 200 << 20, handed_back  # the 256 MiB block
    assert faults <= 100 and after <= 64 << 20, (faults, after)  # reused in place: 65,536 pages, no faults
    kept, _, _ = _lazy_free(3, **{**MIMALLOC_SETTINGS, "MIMALLOC_PURGE_DELAY": "-1"})
    assert kept <= 16 << 20, kept
