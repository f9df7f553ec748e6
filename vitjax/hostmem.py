"""Which ``malloc`` this process runs on, and what that costs XLA's CPU backend.

XLA's CPU backend gives every execution of a compiled step one temporary buffer for all its
intermediate values (1.7 GB for DeiT-tiny's training step at batch 32) and frees it at the
end. glibc's ``malloc`` serves a request that large with a fresh ``mmap`` and returns it with
``munmap``, so every step page-faults and zeroes the whole buffer again: ~470,000 page
faults and ~0.9 s of kernel time per DeiT-tiny step at batch 32 on 2 cores. tcmalloc keeps
freed memory for reuse; preloading it (``LD_PRELOAD=libtcmalloc_minimal.so.4``, Debian/Ubuntu
package ``libtcmalloc-minimal4``) removes those faults (docs/performance.md).
"""

from __future__ import annotations

import ctypes.util
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
    """A one-line hint for the training log when training on CPU under glibc's ``malloc``, else ``None``."""
    if backend != "cpu" or host_allocator() != "glibc":
        return None
    return TCMALLOC_HINT.format(lib=tcmalloc_library() or "libtcmalloc_minimal.so.4 (package libtcmalloc-minimal4)")
