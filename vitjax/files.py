"""Where vitjax keeps files, and writing them so that they appear complete or not at all.

:func:`cache_root` is the one cache directory (downloaded weights, built kernels).

Both helpers hand out a temporary path beside the target (same directory, so the final
``os.replace`` is an atomic rename on one filesystem) named ``.<name>.<random>.partial``.
When the ``with`` block completes, the temporary becomes the target; when it raises, the
temporary is deleted and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary file beside ``path``; on success it is flushed to disk and renamed to ``path``.

    An existing ``path`` is replaced. The parent directory must exist (``FileNotFoundError``
    otherwise); callers that want their own message check it first.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the result gets a normal file's mode
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``path`` that becomes ``path`` on success.

    An existing ``path`` is replaced: it is first renamed aside, then the new directory is
    renamed into place, then the old one is deleted, so ``path`` never holds a mix of both.
    The parent directory must exist (``FileNotFoundError`` otherwise).
    """
    path = Path(path).absolute()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the result gets a normal directory's mode
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_root() -> Path:
    """``$VITJAX_CACHE``, else ``~/.cache/vitjax`` (``$XDG_CACHE_HOME``), ``~/Library/Caches/vitjax``
    on macOS, ``%LOCALAPPDATA%\\vitjax\\Cache`` on Windows."""
    if os.environ.get("VITJAX_CACHE"):
        return Path(os.environ["VITJAX_CACHE"]).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "vitjax" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "vitjax"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitjax"
