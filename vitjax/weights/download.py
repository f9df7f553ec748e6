"""Downloads into a local cache that never holds a half-written or unchecked file.

The machinery behind :mod:`vitjax.weights.pretrained` (and ``interop``'s inference-model
downloads), with nothing PaddleClas-specific in it:

* :func:`vitjax.files.cache_root`: ``$VITJAX_CACHE``, else the platform's user cache directory.
* :func:`download_to_part`: streams a URL into ``<dest>.part``, resuming an existing
  ``.part`` with an HTTP ``Range`` request (or starting over when the server ignores
  it), with timeouts, a few retries with exponential back-off, and a progress bar.
* :func:`fetch_cached`: the whole cache protocol for one file: a lock per file (so
  processes sharing a file system download it once), a cache hit only when the file's
  SHA-256 still matches the one recorded beside it, otherwise download, check
  (a known SHA-256 and a caller's ``verify``), rename into place, record the SHA-256.
* :func:`fetch_cached_archive`: the same for an archive unpacked into a cached directory
  (:func:`safe_extract_tar`: no member may leave the directory, no links or devices, bounded
  sizes), every unpacked file's SHA-256 recorded.
* Digest sidecars (``<file>.sha256``) are ``sha256sum`` lines, so ``sha256sum -c`` works.

``VITJAX_OFFLINE=1`` turns every download into an error that says what is missing.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import http.client
import io
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath

from vitjax.files import atomic_file

CHUNK = 1 << 18
DEFAULT_TIMEOUT = 30.0  # seconds without a byte before a connection is given up
DEFAULT_RETRIES = 4  # attempts that make no progress, per download
DEFAULT_BACKOFF = 1.0  # seconds before the first retry, doubled each time (capped at 30 s)
MAX_TAR_MEMBERS = 256
MAX_TAR_BYTES = 8 << 30  # what an archive may unpack to, in all
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
    with atomic_file(sidecar) as tmp:
        tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items())))


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

            self._bar = tqdm(
                total=total,
                initial=initial,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                file=sys.stderr,
                leave=True,
            )
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


def _usable_cached(dest: Path, sidecar: Path, adopt: Callable[[], None] | None) -> bool:
    """True when ``dest`` is cached and its recorded SHA-256 sums still match. A damaged copy is
    named on stderr and removed; an unrecorded one is checked by ``adopt`` (which records it)
    or removed when there is no ``adopt`` or it refuses."""
    if not dest.exists():
        return False
    bad = corrupted_files(sidecar)
    if bad == []:
        return True
    if bad is None and adopt is not None:
        try:
            adopt()
            return True
        except Exception as e:  # noqa: BLE001 - any refusal means: fetch again
            _warn(f"{dest}: cached copy is not usable ({e}); downloading it again")
    elif bad:
        _warn(
            f"{dest}: cached file is corrupted (SHA-256 of {', '.join(bad)} no longer matches "
            f"{sidecar.name}); downloading it again"
        )
    else:
        _warn(f"{dest}: cached copy has no SHA-256 record; downloading it again")
    if dest.is_dir():
        shutil.rmtree(dest)
    else:
        dest.unlink()
    return False


def _refuse_offline(dest: Path, url: str) -> None:
    if is_offline():
        raise OfflineError(
            f"VITJAX_OFFLINE is set and {dest} is not in the cache (it comes from {url}); "
            "unset VITJAX_OFFLINE, or put it there by hand"
        )


def _check_download(
    url: str,
    path: Path,
    sha256: str | None,
    check: Callable[[Path], object] | None,
    refusable: tuple[type[BaseException], ...] = (ValueError, OSError),
) -> tuple[str, object]:
    """``(SHA-256 of path, check(path))``; a SHA-256 other than the published ``sha256``, or a
    ``refusable`` error from ``check``, raises :class:`RefusedDownload` naming ``url``."""
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256:
        raise RefusedDownload(
            f"refused the download of {url}: its SHA-256 is {digest}, not the published {sha256}; nothing was cached"
        )
    if check is None:
        return digest, None
    try:
        return digest, check(path)
    except TargetWriteError:  # our disk, not the download: keep the file for the next try
        raise
    except refusable as e:
        raise RefusedDownload(f"refused the download of {url}: {e}; nothing was cached") from None


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
    (``<dest>.sha256``); a mismatch is reported on stderr and the file fetched again (a file
    put there by hand, with no record, is checked like a download and then recorded). A new
    download goes to ``<dest>.part`` (resumed on the next call if cut off), must match
    ``sha256`` when given and pass ``verify(path)`` (which raises ``ValueError``/``OSError``
    to refuse it; a refused file is deleted), and only then is renamed to ``dest`` and its
    SHA-256 recorded. The whole sequence holds a lock on ``dest``, so concurrent processes
    end with one good copy.
    """
    dest = Path(dest)
    sidecar = digest_sidecar(dest)

    def check(path: Path) -> str:
        return _check_download(url, path, sha256, verify)[0]

    with file_lock(dest):
        if _usable_cached(dest, sidecar, lambda: write_digests(sidecar, {dest.name: check(dest)})):
            return dest
        _refuse_offline(dest, url)
        part = dest.with_name(dest.name + ".part")
        download_to_part(url, part, quiet=quiet, timeout=timeout, retries=retries, backoff=backoff, label=dest.name)
        try:
            digest = check(part)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        write_digests(sidecar, {dest.name: digest})
        return dest


def fetch_cached_archive(
    url: str,
    dest: Path,
    *,
    unpack: Callable[[Path, Path], Path],
    sha256: str | None = None,
    quiet: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
) -> Path:
    """The directory ``dest``, unpacked from the archive at ``url`` unless already cached.

    ``unpack(archive, staging)`` unpacks into the empty directory ``staging`` (use
    :func:`safe_extract_tar`), checks the result, and returns the directory to install (``staging``
    or one inside it); it raises ``ValueError``/``OSError`` to refuse. The archive is downloaded
    as in :func:`fetch_cached` (resumable ``.part``, ``sha256`` when known), and deleted once the
    directory is in place with every file's SHA-256 recorded in ``<dest>.sha256``.
    """
    dest = Path(dest)
    sidecar = digest_sidecar(dest)
    with file_lock(dest):
        if _usable_cached(dest, sidecar, None):
            return dest
        _refuse_offline(dest, url)
        part = dest.with_name(dest.name + ".download.part")
        download_to_part(
            url, part, quiet=quiet, timeout=timeout, retries=retries, backoff=backoff, label=url.rsplit("/", 1)[-1]
        )
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            _, unpacked = _check_download(
                url,
                part,
                sha256,
                lambda archive: unpack(archive, staging),
                refusable=(ValueError, OSError, tarfile.TarError),
            )
            digests = {
                f"{dest.name}/{path.relative_to(unpacked).as_posix()}": sha256_of(path)
                for path in sorted(unpacked.rglob("*"))
                if path.is_file()
            }
            os.replace(unpacked, dest)
            write_digests(sidecar, digests)
        finally:
            part.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        return dest


class UnsafeArchiveError(ValueError):
    """An archive with a member that could escape its directory, a link, a device, or too much data."""


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    path = PurePosixPath(name)
    if path.is_absolute() or (name[1:2] == ":" and name[:1].isalpha()):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if "\\" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has a backslash in its path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would land outside the target directory")
    return tuple(part for part in path.parts if part != ".")


MAX_TAR_READ = 4 << 20  # the most one read may ask of an archive: member data comes in CHUNKs, headers are small


class _BoundedReads(io.RawIOBase):
    """A (decompressed) archive stream that refuses any single read over ``MAX_TAR_READ`` bytes.

    ``tarfile`` reads a GNU long name or a pax header whole, at the size its header
    declares: a few bytes of gzip could otherwise ask for gigabytes of memory.
    """

    def __init__(self, inner, archive: Path, max_total: int):
        super().__init__()
        self.inner, self.archive, self.max_total, self.total = inner, archive, max_total, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_TAR_READ:
            raise UnsafeArchiveError(
                f"{self.archive}: a header asks to read {size} bytes at once (at most {MAX_TAR_READ})"
            )
        data = self.inner.read(size)
        self.total += len(data)
        if self.total > self.max_total:
            raise UnsafeArchiveError(f"{self.archive}: decompresses to more than {self.max_total} bytes")
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def close(self) -> None:
        self.inner.close()
        super().close()

    def tell(self) -> int:
        return self.inner.tell()


def _open_decompressed(archive: Path):
    """The archive's bytes, decompressed by its magic number (gzip, bzip2, xz, or none)."""
    with open(archive, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(archive, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(archive, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(archive, "rb")
    return open(archive, "rb")


# What a damaged archive, or a decompressor fed garbage, raises: all mean "not a usable tar".
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError, UnicodeError)


def safe_extract_tar(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    *,
    max_members: int = MAX_TAR_MEMBERS,
    max_bytes: int = MAX_TAR_BYTES,
) -> list[Path]:
    """Extracts the regular files and directories of a tar archive into ``target``; returns the files.

    Every member is checked before anything is written: an absolute path or ``..`` component,
    a symbolic or hard link, a device or FIFO, more than ``max_members`` members or more than
    ``max_bytes`` in all raise :class:`UnsafeArchiveError` naming the archive and the member.
    A damaged or truncated archive, a member that collides with another, or a header that asks
    for more than ``MAX_TAR_READ`` bytes at once raise it too, and whatever was written by then
    is removed: the target holds the whole archive or nothing new. File modes and owners in the
    archive are ignored. Memory stays bounded (reads of at most ``MAX_TAR_READ``) and so does
    time: the decompressed stream is read at most twice over (the checks, then the extraction),
    ``2 * max_bytes + (max_members + 2) * MAX_TAR_READ`` bytes in all, headers included.
    A failure to write the target (a full disk, no permission) is an ``OSError`` naming the
    target file, not the archive's fault; it too leaves nothing new behind.
    """
    archive, target = Path(archive), Path(target)
    written: list[Path] = []
    try:
        stream = _BoundedReads(_open_decompressed(archive), archive, 2 * max_bytes + (max_members + 2) * MAX_TAR_READ)
        with stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            members = _checked_members(archive, tar, max_members, max_bytes)
            return _extract_members(archive, tar, members, target, written)
    except (UnsafeArchiveError, TargetWriteError):
        _remove_written(written)
        raise
    except _ARCHIVE_ERRORS as e:
        _remove_written(written)
        if isinstance(e, FileNotFoundError) and not archive.exists():
            raise UnsafeArchiveError(f"{archive}: no such file") from None
        raise UnsafeArchiveError(f"{archive}: not a usable tar archive ({type(e).__name__}: {e})") from None


def _checked_members(archive: Path, tar: tarfile.TarFile, max_members: int, max_bytes: int):
    members, total = [], 0
    for member in tar:
        if len(members) == max_members:
            raise UnsafeArchiveError(f"{archive}: more than {max_members} members")
        parts = _member_parts(archive, member.name)
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link (to {member.linkname!r})")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is not a regular file or directory")
        total += member.size
        if total > max_bytes:
            raise UnsafeArchiveError(f"{archive}: unpacks to more than {max_bytes} bytes")
        members.append((member, parts))
    return members


def _extract_members(archive: Path, tar: tarfile.TarFile, members, target: Path, written: list[Path]) -> list[Path]:
    files, root = [], target.resolve()
    for member, parts in members:
        path = target.joinpath(*parts)
        if not path.resolve().is_relative_to(root):
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} would land outside the target directory")
        try:
            _make_dirs(path if member.isdir() else path.parent, written)
            if member.isdir():
                continue
            out = open(path, "xb", buffering=0)  # unbuffered: every failed write is seen in _write
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} collides with another member") from None
        except OSError as e:  # a full disk, no permission: our side, not the archive's
            raise TargetWriteError(f"cannot write {e.filename or path}: {e.strerror or e}") from None
        written.append(path)
        with tar.extractfile(member) as source, out:
            while chunk := source.read(CHUNK):  # a damaged archive raises here: the archive's fault
                _write(out, chunk, path)
        files.append(path)
    return files


class TargetWriteError(OSError):
    """Extracting an archive failed on our side (the target's disk or permissions), not the archive's."""


def _write(out, chunk: bytes, path: Path) -> None:
    try:
        view = memoryview(chunk)
        while view:
            view = view[out.write(view) :]
    except OSError as e:
        raise TargetWriteError(f"cannot write {path}: {e.strerror or e}") from None


def _make_dirs(directory: Path, written: list[Path]) -> None:
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir()
        written.append(path)


def _remove_written(written: list[Path]) -> None:
    for path in reversed(written):
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()


def _warn(message: str) -> None:
    """A damaged cache is worth a line on stderr even when progress is silenced."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
