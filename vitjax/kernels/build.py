"""Building the native libraries: toolchain, the cache key, and for the oneDNN kernel its files and private copy.

:func:`compile_cached` compiles one source file into ``$VITJAX_CACHE/kernels/<stem>-<key>/`` (one
directory per source, compiler, flags, versions and machine; it appears complete or not at all).
:func:`build` compiles ``onednn_matmul.cc`` against the ``cpu-kernels`` extra's oneDNN that way,
and :func:`open_library` loads it; what it computes and how JAX calls it is
:mod:`vitjax.kernels.onednn`'s business. :mod:`vitjax.kernels.resample` builds its C file the same way.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

CXXFLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fopenmp")
LIBRARY_NAME = "onednn_matmul.so"
PUBLIC_SONAME = b"libdnnl.so.3"
PRIVATE_SONAME = "libvjdn.so.3"  # same length as PUBLIC_SONAME
COMPILE_TIMEOUT_S = 300
SOURCE = Path(__file__).with_name("onednn_matmul.cc")
EXTRA_HINT = "pip install 'vitjax[cpu-kernels]' (oneDNN's runtime and headers) and a C++ compiler (g++)"
RUNTIME_DISTS = ("onednn-cpu-gomp", "onednn-devel-cpu-gomp")


class KernelUnavailable(RuntimeError):
    """The oneDNN kernel cannot be built or loaded here; the message says why and what to install."""


def _dist_file(dist: str, suffix: str) -> Path:
    """The installed file of distribution ``dist`` whose path ends with ``suffix``."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise KernelUnavailable(f"{dist} is not installed: {EXTRA_HINT}") from None
    for f in files:
        if ("/" + str(f).replace("\\", "/")).endswith("/" + suffix):
            return Path(f.locate()).resolve()
    raise KernelUnavailable(f"{dist} is installed but has no file ending in {suffix!r}: reinstall it ({EXTRA_HINT})")


def onednn_paths() -> tuple[Path, Path]:
    """``(include_dir, libdnnl.so)`` of the installed oneDNN (the ``cpu-kernels`` extra)."""
    lib = _dist_file(RUNTIME_DISTS[0], "libdnnl.so")
    header = _dist_file(RUNTIME_DISTS[1], "include/oneapi/dnnl/dnnl.hpp")
    return header.parents[2], lib


def compiler_command(variable: str = "CXX", names: tuple[str, ...] = ("c++", "g++"), hint: str = "") -> list[str]:
    """The compiler command: ``$CXX`` (``$CC`` for C), which may carry a launcher (``ccache g++``),
    else the first of ``names`` on the PATH. ``hint`` ends the error where there is none ("to build ...")."""
    found = next((path for path in map(shutil.which, names) if path), "")
    command = shlex.split(os.environ.get(variable, "")) or [found]
    if not command[0]:
        raise KernelUnavailable(f"no compiler found (set {variable}, or install {names[-1]}) {hint}".rstrip())
    return command


def private_onednn_copy(libdnnl: Path, out: Path) -> None:
    """Writes ``libdnnl`` to ``out`` with the soname ``out.name`` (same length as ``libdnnl.so.3``).

    Paddle ships its own ``libdnnl.so.3`` (another oneDNN 3.x release). The dynamic linker loads
    one library per soname: whichever of the two came first would serve both, and Paddle's
    libraries need symbols that older releases lack (``import paddle`` after our kernel fails).
    Under its own soname our copy loads beside Paddle's, in either order.
    """
    data = libdnnl.read_bytes()
    soname, private = PUBLIC_SONAME + b"\0", out.name.encode() + b"\0"
    if len(private) != len(soname):
        raise ValueError(f"private soname {out.name!r} must be {len(soname) - 1} bytes long")
    if data.count(soname) != 1:
        raise KernelUnavailable(
            f"{libdnnl}: expected its soname {PUBLIC_SONAME.decode()} once, found {data.count(soname)} times"
        )
    out.write_bytes(data.replace(soname, private))


def compile_cached(
    source: Path,
    library_name: str,
    compiler: list[str],
    flags: Sequence[str],
    key_parts: Sequence[str],
    cache_dir: Path | None = None,
    prepare: Callable[[Path], list[str]] | None = None,
    hint: str = "",
) -> Path:
    """Compiles ``source`` into ``cache_dir/<stem>-<key>/library_name`` unless it is there; returns its path.

    The key hashes the source, the compiler, ``flags`` and ``key_parts`` (versions, paths, the
    machine). ``prepare(tmp)`` may put files beside the library (a private copy of a library it
    links to) and returns the arguments that link them. The directory appears complete or not at
    all (:func:`vitjax.files.atomic_directory`). ``cache_dir``: ``$VITJAX_CACHE/kernels`` by default."""
    if cache_dir is None:
        from vitjax.files import cache_root

        cache_dir = cache_root() / "kernels"
    key = hashlib.sha256(source.read_bytes())
    for part in (*compiler, *flags, *key_parts):
        key.update(f"{part};".encode())
    target = Path(cache_dir) / f"{source.stem}-{key.hexdigest()[:16]}"
    library = target / library_name
    if library.exists():
        return library
    from vitjax.files import atomic_directory

    hint = f": {hint}" if hint else ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(target) as tmp:
            link = prepare(tmp) if prepare else []
            command = [*compiler, *flags, str(source), *link, "-o", str(tmp / library_name)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            except OSError as e:
                raise KernelUnavailable(
                    f"cannot run the compiler {command[0]} ({e.strerror}) to build {source.name}{hint}"
                ) from None
            except subprocess.TimeoutExpired:
                raise KernelUnavailable(f"compiling {source} took over {COMPILE_TIMEOUT_S} s; gave up") from None
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-15:])
                raise KernelUnavailable(f"compiling {source} failed ({command[0]} exit {done.returncode}):\n{tail}")
    except OSError as e:  # the cache directory is not writable, the disk is full, ...
        raise KernelUnavailable(f"cannot build {source.name} in {target.parent}: {e}") from None
    return library


def build(cache_dir: Path | None = None) -> Path:
    """Compiles the kernel library unless it is already in the cache; returns its path.

    The directory holds the kernel and a private copy of oneDNN it links to (see
    :func:`private_onednn_copy`); it appears complete or not at all."""
    if sys.platform != "linux":
        raise KernelUnavailable(f"the oneDNN kernel is built for Linux only (this is {sys.platform})")
    include_dir, libdnnl = onednn_paths()
    compiler = compiler_command(hint=f"to build {SOURCE.name}: {EXTRA_HINT}")

    def private_onednn(tmp: Path) -> list[str]:
        private_onednn_copy(libdnnl, tmp / PRIVATE_SONAME)
        return [f"-L{tmp}", f"-l:{PRIVATE_SONAME}", "-Wl,-rpath,$ORIGIN"]

    versions = [f"{dist}={importlib.metadata.version(dist)}" for dist in ("jaxlib", *RUNTIME_DISTS)]
    return compile_cached(
        SOURCE,
        LIBRARY_NAME,
        compiler,
        (*CXXFLAGS, f"-I{jax.ffi.include_dir()}", f"-I{include_dir}"),
        (*versions, str(libdnnl), platform.machine()),
        cache_dir,
        prepare=private_onednn,
        hint=EXTRA_HINT,
    )


def _so_version() -> tuple[int, int]:
    """The installed oneDNN's major and minor version, from its library's file names (``libdnnl.so.3.2``)."""
    versions = []
    for f in importlib.metadata.files(RUNTIME_DISTS[0]) or []:
        name = Path(str(f)).name
        parts = name[len("libdnnl.so.") :].split(".")
        if name.startswith("libdnnl.so.") and all(p.isdigit() for p in parts):
            versions.append(tuple(int(p) for p in parts))
    longest = max(versions, key=len, default=())
    if len(longest) < 2:
        raise KernelUnavailable(f"{RUNTIME_DISTS[0]} has no libdnnl.so.MAJOR.MINOR: reinstall it ({EXTRA_HINT})")
    return longest[0], longest[1]


def open_library(path: Path) -> ctypes.CDLL:
    """Loads a built kernel library and checks it runs the installed oneDNN (Linux only)."""
    if sys.platform != "linux":
        raise KernelUnavailable(f"the oneDNN kernel is built for Linux only (this is {sys.platform})")
    try:
        library = ctypes.CDLL(str(path))
    except OSError as e:
        raise KernelUnavailable(f"loading {path} failed ({e}); delete {path.parent} to rebuild") from None
    running = library.VitjaxOnednnVersion()
    expected = _so_version()
    if (running // 10000, running // 100 % 100) != expected:
        raise KernelUnavailable(
            f"{path} runs oneDNN {running // 10000}.{running // 100 % 100}, not the installed "
            f"{expected[0]}.{expected[1]}: another oneDNN took its symbols in this process"
        )
    return library
