"""Downloads into a local cache that never holds a half-written or unchecked file.

The machinery behind :mod:`vitjax.weights.pretrained` (and ``interop``'s inference-model
downloads), with nothing PaddleClas-specific in it:

* :func:`cache_root`: ``$VITJAX_CACHE``, else the platform's user cache directory.
* :func:`download_to_part`: streams a URL into ``<dest>.part``, resuming an existing
  ``.part`` with an HTTP ``Range`` request (or starting over when the server ignores
  it), with timeouts, a few retries with exponential back-off, and a progress bar.
* :func:`fetch_cached`: the whole cache protocol for one file: a lock per file (so
  processes sharing a file system download it once), a cache hit only when the file's
  SHA-256 still matches the one recorded beside it, otherwise download, check
  (a known SHA-256 and a caller's ``verify``), rename into place, record the SHA-256.
* Digest sidecars (``<file>.sha256``) are ``sha256sum`` lines, so ``sha256sum -c`` works.

``VITJAX_OFFLINE=1`` turns every download into an error that says what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Mapping

CHUNK = 1 << 18
DEFAULT_TIMEOUT = 30.0  # seconds without a byte before a connection is given up
DEFAULT_RETRIES = 4  # attempts that make no progress, per download
DEFAULT_BACKOFF = 1.0  # seconds before the first retry, doubled each time (capped at 30 s)
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_USER_AGENT = "vitjax-weights/1 (+python urllib)"


class DownloadError(RuntimeError):
    """A download that failed or a cached file that cannot be used; the message says what to do."""


class RefusedDownload(DownloadError):
    """A download that arrived but failed a check (known SHA-256, ``verify``); nothing was cached."""


class OfflineError(DownloadError):
    """``VITJAX_OFFLINE`` is set and the file is not in the cache."""


def is_offline() -> bool:
    return os.environ.get("VITJAX_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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


# --- SHA-256 sidecars -----------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_digests(sidecar: Path, digests: Mapping[str, str]) -> None:
    """Records ``{path relative to sidecar's directory: sha256}`` as ``sha256sum`` lines, atomically."""
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items())))
    os.replace(tmp, sidecar)


def read_digests(sidecar: Path) -> dict[str, str] | None:
    """The digests recorded in ``sidecar``, or None when it is missing or unreadable."""
    try:
        lines = sidecar.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    digests = {}
    for line in lines:
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            return None
        digests[name] = digest
    return digests or None


def corrupted_files(sidecar: Path) -> list[str] | None:
    """Files listed in ``sidecar`` whose SHA-256 no longer matches (missing ones included);
    None when there is no usable record."""
    digests = read_digests(sidecar)
    if digests is None:
        return None
    bad = []
    for name, digest in digests.items():
        path = sidecar.parent / name
        if not path.is_file() or sha256_of(path) != digest:
            bad.append(str(path))
    return bad


# --- locking and progress -----------------------------------------------------------------


@contextlib.contextmanager
def file_lock(target: Path) -> Iterator[None]:
    """An inter-process lock on ``<target>.lock`` (``filelock``: works across hosts on a shared
    file system that supports ``flock``)."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        yield


class Progress:
    """tqdm on a terminal; a handful of plain lines (start, each quarter, done) in a log; nothing
    when ``quiet``."""

    def __init__(self, label: str, total: int | None, initial: int, quiet: bool):
        self.label, self.total, self.done, self.quiet = label, total, initial, quiet
        self._bar = None
        self._next_quarter = 1
        if quiet:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=label, file=sys.stderr, leave=True)
        else:
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            resumed = f", resuming at {initial / 1e6:.1f} MB" if initial else ""
            print(f"downloading {label}{size}{resumed}", file=sys.stderr, flush=True)
            if total:
                while self._next_quarter < 4 and initial >= total * self._next_quarter / 4:
                    self._next_quarter += 1

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self.quiet and self.total:
            while self._next_quarter < 4 and self.done >= self.total * self._next_quarter / 4:
                print(f"  {self.label}: {25 * self._next_quarter}%", file=sys.stderr, flush=True)
                self._next_quarter += 1

    def close(self, ok: bool) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.quiet and ok:
            print(f"  {self.label}: done ({self.done / 1e6:.1f} MB)", file=sys.stderr, flush=True)


# --- HTTP ---------------------------------------------------------------------------------


def _content_range_start(value: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/TOTAL``."""
    if not value or not value.startswith("bytes "):
        return None
    start, _, _ = value[6:].partition("-")
    return int(start) if start.isdigit() else None


def _content_range_total(value: str | None) -> int | None:
    total = (value or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix."""


def _attempt(url: str, part: Path, timeout: float, quiet: bool, label: str) -> None:
    """One request: appends to ``part`` from its current size (Range), or rewrites it when the
    server sends the whole file. Raises :class:`_Retryable` or :class:`DownloadError`."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our .part is not a prefix the server recognises: start over
            part.unlink()
            raise _Retryable(f"HTTP 416 for a resumed request; restarting {url}") from None
        if e.code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {e.code} {e.reason} from {url}") from None
        raise DownloadError(f"HTTP {e.code} {e.reason} from {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Retryable(f"cannot reach {url} ({reason})") from None
    with response:
        status = getattr(response, "status", None) or 200
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206 and have and _content_range_start(response.headers.get("Content-Range")) == have:
            mode, start, total = "ab", have, _content_range_total(response.headers.get("Content-Range"))
        else:  # 200 (no Range support, or a fresh download): the whole body
            mode, start, total = "wb", 0, length
        progress = Progress(label, total, start, quiet)
        ok = False
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:  # dropped mid-file, timeout
                        if isinstance(e, http.client.IncompleteRead) and e.partial:
                            f.write(e.partial)
                            progress.update(len(e.partial))
                        raise _Retryable(f"connection to {url} lost after {f.tell() / 1e6:.1f} MB ({e!r})") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    progress.update(len(chunk))
                size = f.tell()
            if total is not None and size != total:
                raise _Retryable(f"{url} ended after {size} of {total} bytes")
            ok = True
        finally:
            progress.close(ok)


def download_to_part(
    url: str,
    part: Path,
    *,
    quiet: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    label: str | None = None,
) -> None:
    """Completes ``part`` with the body of ``url``, resuming what is already there.

    An attempt that received bytes is retried at once (a dropped connection resumes where it
    stopped); ``retries`` attempts in a row that receive nothing fail, with ``backoff`` seconds
    (doubling) between them. HTTP errors other than 408/425/429/5xx fail at once.
    """
    if is_offline():
        raise OfflineError(f"VITJAX_OFFLINE is set: not downloading {url}")
    label = label or url.rsplit("/", 1)[-1]
    failures, delay, last = 0, backoff, ""
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _attempt(url, part, timeout, quiet, label)
            return
        except _Retryable as e:
            last = str(e)
        after = part.stat().st_size if part.exists() else 0
        if after > before:
            failures, delay = 0, backoff
            continue
        failures += 1
        if failures >= retries:
            raise DownloadError(f"{last} (gave up after {retries} attempts)")
        if not quiet:
            print(f"  {last}; retrying in {delay:g} s", file=sys.stderr, flush=True)
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


def fetch_cached(
    url: str,
    dest: Path,
    *,
    verify: Callable[[Path], None] | None = None,
    sha256: str | None = None,
    quiet: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
) -> Path:
    """``dest``, downloaded from ``url`` unless a good copy is already cached.

    A cached file counts only when its SHA-256 matches the one recorded beside it
    (``<dest>.sha256``); a mismatch is reported on stderr and the file fetched again. A new
    download goes to ``<dest>.part`` (resumed on the next call if cut off), must match
    ``sha256`` when given and pass ``verify(path)`` (which raises to refuse it; a refused file
    is deleted), and only then is renamed to ``dest`` and its SHA-256 recorded. The whole
    sequence holds a lock on ``dest``, so concurrent processes end with one good copy.
    """
    dest = Path(dest)
    sidecar = digest_sidecar(dest)
    with file_lock(dest):
        if dest.is_file():
            bad = corrupted_files(sidecar)
            if bad == []:
                return dest
            if bad is None:  # a file placed by hand (or renamed before its digest was written)
                try:
                    if verify is not None:
                        verify(dest)
                    digest = sha256_of(dest)
                    if sha256 is not None and digest != sha256:
                        raise DownloadError(f"SHA-256 {digest} is not the published {sha256}")
                except Exception as e:  # noqa: BLE001 - any refusal means: fetch again
                    _warn(f"{dest}: cached file is not usable ({e}); downloading it again")
                    dest.unlink()
                else:
                    write_digests(sidecar, {dest.name: digest})
                    return dest
            else:
                _warn(f"{dest}: cached file is corrupted (its SHA-256 no longer matches {sidecar.name}); "
                      "downloading it again")
                dest.unlink()
        if is_offline():
            raise OfflineError(f"VITJAX_OFFLINE is set and {dest} is not in the cache (it comes from {url}); "
                               "unset VITJAX_OFFLINE, or put the file there by hand")
        part = dest.with_name(dest.name + ".part")
        download_to_part(url, part, quiet=quiet, timeout=timeout, retries=retries, backoff=backoff,
                         label=dest.name)
        try:
            digest = sha256_of(part)
            if sha256 is not None and digest != sha256:
                raise RefusedDownload(f"refused the download of {url}: its SHA-256 is {digest}, not the "
                                      f"published {sha256}; nothing was cached")
            if verify is not None:
                try:
                    verify(part)
                except (ValueError, OSError) as e:
                    raise RefusedDownload(f"refused the download of {url}: {e}; nothing was cached") from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        write_digests(sidecar, {dest.name: digest})
        return dest


def _warn(message: str) -> None:
    """A damaged cache is worth a line on stderr even when progress is silenced."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
