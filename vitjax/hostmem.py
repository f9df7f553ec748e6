"""Which ``malloc`` this process runs on, and what that costs XLA's CPU backend.

XLA's CPU backend gives every execution of a compiled step one temporary buffer for all its
intermediate values (1.7 GB for DeiT-tiny's training step at batch 32) and frees it at the
end. glibc's ``malloc`` serves a request that large with a fresh ``mmap`` and returns it with
``munmap``, so every step page-faults and zeroes the whole buffer again: ~470,000 page
faults and ~0.9 s of kernel time per DeiT-tiny step at batch 32 on 2 cores. tcmalloc keeps
freed memory for reuse; preloading it (``LD_PRELOAD=libtcmalloc_minimal.so.4``, Debian/Ubuntu
package ``libtcmalloc-minimal4``) removes those faults (docs/performance.md).

Without a preload, :func:`keep_freed_memory` gets most of that from glibc itself (``mallopt``):
one arena for every thread (XLA allocates from its worker threads, and a thread's own arena
serves any block over 64 MB with ``mmap`` whatever the other settings say), no ``mmap`` for large
blocks, and no trimming of the heap's top, so a freed step buffer stays mapped and the next step
reuses it without faulting. The one arena costs a lock on every allocation (the earlier
measurement: DeiT-tiny's step at batch 32 in 2.05 s, against 2.35 s on glibc as it comes and 1.82 s
under tcmalloc; docs/performance.md). The training and
serving entry points call it at start (``VITJAX_MALLOC=system`` leaves glibc as it is); a
user's own loop can call ``vitjax.keep_freed_memory()`` before its first step. The price is
tcmalloc's too: memory freed at the heap's top is kept for reuse rather than returned to the
system, so the process's resident size stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from pathlib import Path

_KNOWN = ("tcmalloc", "jemalloc", "mimalloc")
TCMALLOC_HINT = (
    "on CPU, XLA page-faults its per-step temporary buffer under glibc malloc; "
    "LD_PRELOAD={lib} made the training step 1.2-1.3x faster at batch 32 (docs/performance.md)"
)


def host_allocator(maps: str | None = None) -> str:
    """``"tcmalloc"``, ``"jemalloc"`` or ``"mimalloc"`` when one is loaded into this process, else ``"glibc"``.

    Read from ``/proc/self/maps`` (``maps`` overrides it, for tests); ``"unknown"`` where there is
    no such file (not Linux).
    """
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "unknown"
    libraries = {Path(line.split()[-1]).name for line in maps.splitlines() if "/" in line}
    for name in _KNOWN:
        if any(name in library for library in libraries):
            return name
    return "glibc"


def tcmalloc_library() -> str | None:
    """The path or soname of an installed tcmalloc, for ``LD_PRELOAD``; ``None`` when there is none."""
    for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"):
            if (Path(directory) / name).is_file():
                return str(Path(directory) / name)
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def allocator_advice(backend: str) -> str | None:
    """A one-line hint for the training log when training on CPU under glibc's ``malloc`` as it comes, else ``None``."""
    if backend != "cpu" or host_allocator() != "glibc" or _applied:
        return None
    return TCMALLOC_HINT.format(lib=tcmalloc_library() or "libtcmalloc_minimal.so.4 (package libtcmalloc-minimal4)")


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_applied = False


def keep_freed_memory() -> bool:
    """Makes glibc's ``malloc`` keep freed large blocks for reuse, as tcmalloc does; True when in effect.

    Does nothing (False) under another allocator (tcmalloc, jemalloc, mimalloc are preloaded for
    this very reason), off glibc, or when ``VITJAX_MALLOC=system``. Call it before the first large
    allocation you want kept and before JAX starts its threads (threads that already have an
    arena keep it; blocks already ``mmap``-ed are returned to the system when freed).

    The three settings are applied in turn; should glibc refuse one (it accepts all three on every
    release we know), the ones before it stay in effect, since glibc cannot restore its dynamic
    thresholds, and the call returns False.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("VITJAX_MALLOC", "keep") == "system" or host_allocator() != "glibc":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # One arena (threads' own arenas mmap large blocks regardless), no mmap for large blocks (they
    # come from the heap), and never trim the heap's top. Before XLA starts its threads.
    _applied = (
        bool(mallopt(_M_ARENA_MAX, 1)) and bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    )
    return _applied


# --- A PyPI-shipped allocator for the entry points -------------------------------------------------------
#
# An allocator replaces glibc's malloc only when the dynamic loader maps it before everything else
# (``LD_PRELOAD``); loaded later it serves nobody. So an entry point (``python -m vitjax.main``,
# ``python -m interop serve``) that finds glibc in charge starts itself again, once, with mimalloc
# (the ``cmeel-mimalloc`` wheel, a dependency on Linux) preloaded, told to hand memory that stayed
# free for a second back to the kernel lazily (``MIMALLOC_PURGE_DELAY=1000``,
# ``MIMALLOC_PURGE_DECOMMITS=0``: ``madvise(MADV_FREE)``, so the pages stay mapped and a block reused
# before the kernel needs them faults nothing, while under memory pressure the kernel takes them
# back instead of killing the process) and to serve blocks of any size from its arenas
# (``MIMALLOC_ARENA_MAX_OBJECT_SIZE``: by default a block over 2 GiB, such as DeiT-small's step
# buffer at batch 32, is mapped fresh from the system and unmapped when freed, every step; the
# first arena reserves 16 GiB of address space, not memory, so that such a block fits): the
# per-step buffer is then reused with neither page faults nor the single arena's lock that
# :func:`keep_freed_memory` pays (docs/performance.md, "The training step by host allocator").

_REEXEC_MARK = "VITJAX_MALLOC_PRELOADED"  # set in the started-again program: never start a third time
_SAVED_PRELOAD = "VITJAX_MALLOC_SAVED_LD_PRELOAD"  # the caller's own LD_PRELOAD, given back to children
MIMALLOC_SETTINGS = {
    "MIMALLOC_PURGE_DELAY": "1000",
    "MIMALLOC_ARENA_PURGE_MULT": "1",  # arenas purge after the same second (mimalloc 3.4's default, pinned)
    "MIMALLOC_PURGE_DECOMMITS": "0",
    "MIMALLOC_ARENA_MAX_OBJECT_SIZE": "64GiB",
    "MIMALLOC_ARENA_RESERVE": "16GiB",
}


def mimalloc_library() -> str | None:
    """The path of the ``cmeel-mimalloc`` wheel's ``libmimalloc.so``, or ``None`` when it is not installed."""
    from importlib import metadata

    try:
        files = metadata.files("cmeel-mimalloc") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith("libmimalloc.so"):
            path = Path(str(file.locate()))
            if path.is_file():
                return str(path.resolve())
    return None


def _accelerator_present(environ: dict[str, str]) -> bool:
    """A GPU or TPU on this host, or JAX told to use one: the preload is for CPU training and serving."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms and platforms != "cpu":
        return True
    if platforms == "cpu":
        return False
    dev = Path("/dev")
    devices = ("nvidia[0-9]*", "accel*", "vfio/[0-9]*", "kfd")  # NVIDIA, TPU (older / newer VMs), AMD ROCm
    return any(any(dev.glob(pattern)) for pattern in devices)


def _started_again(environ) -> bool:
    return environ.get(_REEXEC_MARK) == str(os.getpid())


def preload_plan(environ: dict[str, str] | None = None, library: str | None = None) -> dict[str, str] | None:
    """The environment to start this program again with (mimalloc preloaded), or ``None`` to run on as it is.

    ``None`` when ``VITJAX_MALLOC`` is ``keep`` (glibc with :func:`keep_freed_memory`) or ``system``
    (glibc as it comes), when this program was started again already, when another allocator is
    loaded, off Linux/glibc, on a host with an accelerator, or when mimalloc is not installed.
    """
    env = dict(os.environ if environ is None else environ)
    if env.get("VITJAX_MALLOC", "auto") not in ("auto", "mimalloc") or _started_again(env):
        return None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc" or host_allocator() != "glibc":
        return None
    if env.get("VITJAX_MALLOC", "auto") == "auto" and _accelerator_present(env):
        return None
    library = library or mimalloc_library()
    if library is None:
        return None
    preload = env.get("LD_PRELOAD", "")
    env.update({key: env.get(key, value) for key, value in MIMALLOC_SETTINGS.items()})
    # The mark names this process: execve keeps the pid, so the started-again program knows itself,
    # while a program it starts in turn (another pid) may preload for itself.
    env.update({_REEXEC_MARK: str(os.getpid()), _SAVED_PRELOAD: preload, "LD_PRELOAD": f"{library} {preload}".strip()})
    return env


def preload_allocator() -> None:
    """Starts the running program again with mimalloc preloaded (see :func:`preload_plan`); returns only
    when it is not started again. Call it first thing in an entry point's ``__main__``, before JAX is
    imported. In the started-again program, ``LD_PRELOAD`` is given back its old value, so the programs
    it starts (workers, compilers) run on their usual allocator."""
    if _started_again(os.environ):
        saved = os.environ.pop(_SAVED_PRELOAD, "")
        if saved:
            os.environ["LD_PRELOAD"] = saved
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    env = preload_plan()
    argv = getattr(sys, "orig_argv", None)
    if env is None or not argv or argv[1:2] in (["-"], []):  # a program read from stdin cannot be read again
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # cannot start again (no such executable, a sandbox): run on glibc, kept
        return


def allocator_summary() -> str:
    """One line for a log: which allocator this process runs on, and how to choose another."""
    name = host_allocator()
    if name == "mimalloc" and _started_again(os.environ):
        return "mimalloc, preloaded by vitjax from the cmeel-mimalloc wheel (VITJAX_MALLOC=keep or system: glibc)"
    if name == "glibc" and _applied:
        return "glibc, freed memory kept (vitjax.keep_freed_memory)"
    return name
