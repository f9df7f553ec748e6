"""PaddleClas's published inference models by name, and the ``download``/``list-pretrained`` commands.

``download_inference_model("DeiT_tiny_patch16_224")`` fetches PaddleClas's
``DeiT_tiny_patch16_224_infer.tar`` (the URL its ``paddleclas.py`` uses) through
:mod:`vitjax.weights.download` (resumable, locked, ``VITJAX_OFFLINE``, ``VITJAX_WEIGHTS_URL``),
unpacks it with :func:`~vitjax.weights.download.safe_extract_tar` (no member outside the
directory, no links, bounded sizes), checks that its parameters map onto the model's key table,
and only then moves the directory into the cache, with every file's SHA-256 recorded beside it.
:func:`load_pretrained_inference_model` returns the Flax variables
(:func:`interop.load_inference_model`, verified against the file's own program).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from interop.inference import InferenceModelError, load_inference_model, locate_inference_model, read_inference_model
from vitjax.weights.convert import Variables
from vitjax.weights.download import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DownloadError,
    OfflineError,
    digest_sidecar,
    fetch_cached_archive,
    safe_extract_tar,
)
from vitjax.weights.pretrained import (
    download_pretrained,
    get_pretrained,
    list_pretrained,
    pretrained_cache,
    resolve_url,
)


def inference_model_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the inference model of ``name`` is (or would be) cached."""
    entry = get_pretrained(name)
    stem = (entry.inference_url or f"{name}_infer.tar").rsplit("/", 1)[-1].removesuffix(".tar")
    return pretrained_cache(cache_dir) / "inference" / stem


def _model_directory(staging: Path) -> Path:
    """``staging`` itself or its one sub-directory, whichever holds the inference files."""
    candidates = [staging] + [p for p in staging.iterdir() if p.is_dir()]
    found = []
    for directory in candidates:
        try:
            locate_inference_model(directory)
            found.append(directory)
        except InferenceModelError:
            continue
    if len(found) != 1:
        raise InferenceModelError(
            "the archive holds no inference model (inference.json or inference.pdmodel with inference.pdiparams)"
            if not found
            else "the archive holds several models"
        )
    return found[0]


def download_inference_model(
    name: str,
    *,
    quiet: bool = False,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
) -> Path:
    """The cached inference model directory of ``name``, downloaded, unpacked and checked first
    if need be. Raises :class:`DownloadError` naming the URL and what to do instead."""
    entry = get_pretrained(name)
    if entry.inference_url is None:
        raise DownloadError(
            f"PaddleClas publishes no inference model for {name}; export one from its weights: "
            f"python -m interop download {name} && python -m interop export "
            f"<the printed .pdparams> OUT_DIR"
        )
    url = resolve_url(entry.inference_url)

    def unpack(archive: Path, staging: Path) -> Path:
        safe_extract_tar(archive, staging)
        directory = _model_directory(staging)
        read_inference_model(directory, entry.architecture, verify=False)  # parses; keys and shapes fit
        return directory

    dest = inference_model_path(name, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        return fetch_cached_archive(
            url,
            dest,
            unpack=unpack,
            sha256=entry.inference_sha256,
            quiet=quiet,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )
    except OfflineError:
        raise
    except DownloadError as e:
        raise type(e)(
            f"{e}. To work around it, download {url} by hand, unpack it and use "
            f"interop.load_inference_model(DIR); or set VITJAX_WEIGHTS_URL to a mirror that serves "
            f"{url.rsplit('/', 1)[-1]}"
        ) from None


def load_pretrained_inference_model(
    name: str, *, verify: bool = True, quiet: bool = False, cache_dir: str | os.PathLike | None = None
) -> Variables:
    """Flax variables recovered from PaddleClas's published inference model of ``name``."""
    directory = download_inference_model(name, quiet=quiet, cache_dir=cache_dir)
    return load_inference_model(directory, get_pretrained(name).architecture, verify=verify)


# --- python -m interop download / list-pretrained ---------------------------------------------


def download_command(args) -> int:
    for name in args.names:
        if args.inference:
            path = download_inference_model(name, quiet=args.quiet, cache_dir=args.cache_dir)
        else:
            path = download_pretrained(name, quiet=args.quiet, cache_dir=args.cache_dir)
        print(f"{name}: {path}")
    return 0


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def list_command(args) -> int:
    for status in list_pretrained(args.cache_dir):
        entry = status.entry
        where = str(status.path) if status.cached else "not cached"
        print(f"{status.name:34s} {_size(status.size):>9s}  {where}")
        print(f"{'':34s} weights:   {status.url or 'none published'}")
        inference = resolve_url(entry.inference_url) if entry.inference_url else "none published"
        directory = inference_model_path(entry.name, args.cache_dir)
        cached = " (cached)" if directory.is_dir() and digest_sidecar(directory).is_file() else ""
        print(f"{'':34s} inference: {inference}{cached}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Adds ``download`` and ``list-pretrained`` to ``python -m interop``."""
    p = sub.add_parser("download", help="fetch PaddleClas's pretrained weights into the cache and print where")
    p.set_defaults(run=download_command)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--inference", action="store_true", help="PaddleClas's exported inference model (*_infer.tar)")
    p.add_argument("--cache-dir", help="default: $VITJAX_CACHE or the user cache directory")
    p.add_argument("-q", "--quiet", action="store_true")
    p = sub.add_parser("list-pretrained", help="names, URLs, sizes and what is cached")
    p.set_defaults(run=list_command)
    p.add_argument("--cache-dir")
