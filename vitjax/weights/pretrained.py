"""PaddleClas's pretrained weights by model name, downloaded once into a checked cache.

``load_pretrained("TNT_small")`` returns the Flax variables of PaddleClas's published
``TNT_small_pretrained.pdparams``. The URL table is PaddleClas 2.6.0's own (the
``MODEL_URLS`` of ``ppcls/arch/backbone/model_zoo/tnt.py`` and
``distilled_vision_transformer.py``; a test checks ours against the wheel), and the inference
models (``*_infer.tar``) are those of its ``paddleclas.py`` (``IMN_MODEL_BASE_DOWNLOAD_URL``
for the names in ``IMN_MODEL_SERIES``).

A file enters the cache (``$VITJAX_CACHE`` or the platform's user cache directory, under
``paddleclas/``) only after it parses with the restricted unpickler and every key and shape
matches the model's key table; its SHA-256 is recorded beside it and re-checked on every
load. ``VITJAX_WEIGHTS_URL=<base>`` fetches every file from ``<base>/<file name>`` instead (a
mirror, an internal server, or ``file:///path/to/dir``); ``VITJAX_OFFLINE=1`` uses the cache
only. :func:`register_pretrained` adds or replaces an entry (your own fine-tuned weights on
your own server, by name).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from vitjax.files import cache_root
from vitjax.models.registry import get_spec, list_models
from vitjax.weights.convert import (
    HeadPolicy,
    Variables,
    _expected_shapes,
    _mismatch_error,
    infer_num_classes,
    load_pdparams,
)
from vitjax.weights.download import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DownloadError,
    OfflineError,
    digest_sidecar,
    fetch_cached,
)
from vitjax.weights.mapping import key_table
from vitjax.weights.pdparams import read_pdparams

_PDPARAMS_BASE = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/"
_INFERENCE_BASE = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/inference/"


@dataclasses.dataclass(frozen=True)
class PretrainedEntry:
    """One downloadable model: ``url`` of its ``.pdparams`` (None: PaddleClas publishes none),
    ``inference_url`` of its ``*_infer.tar`` (None likewise), and SHA-256 sums / sizes when known."""

    name: str
    url: str | None
    inference_url: str | None = None
    sha256: str | None = None
    inference_sha256: str | None = None
    size: int | None = None  # bytes of the .pdparams, when known before downloading
    model: str = ""  # the architecture (a registered model name); defaults to ``name``

    @property
    def architecture(self) -> str:
        return self.model or self.name

    @property
    def filename(self) -> str:
        return _basename(self.url) if self.url else f"{self.name}_pretrained.pdparams"


# PaddleClas 2.6.0's MODEL_URLS, verbatim (tests/interop/test_pretrained_paddleclas.py checks).
_PADDLECLAS_PDPARAMS = {
    "DeiT_tiny_patch16_224": _PDPARAMS_BASE + "DeiT_tiny_patch16_224_pretrained.pdparams",
    "DeiT_small_patch16_224": _PDPARAMS_BASE + "DeiT_small_patch16_224_pretrained.pdparams",
    "DeiT_base_patch16_224": _PDPARAMS_BASE + "DeiT_base_patch16_224_pretrained.pdparams",
    "DeiT_tiny_distilled_patch16_224": _PDPARAMS_BASE + "DeiT_tiny_distilled_patch16_224_pretrained.pdparams",
    "DeiT_small_distilled_patch16_224": _PDPARAMS_BASE + "DeiT_small_distilled_patch16_224_pretrained.pdparams",
    "DeiT_base_distilled_patch16_224": _PDPARAMS_BASE + "DeiT_base_distilled_patch16_224_pretrained.pdparams",
    "DeiT_base_patch16_384": _PDPARAMS_BASE + "DeiT_base_patch16_384_pretrained.pdparams",
    "DeiT_base_distilled_patch16_384": _PDPARAMS_BASE + "DeiT_base_distilled_patch16_384_pretrained.pdparams",
    "TNT_small": _PDPARAMS_BASE + "TNT_small_pretrained.pdparams",
    "TNT_base": _PDPARAMS_BASE + "TNT_base_pretrained.pdparams",
}
# paddleclas.py's IMN_MODEL_SERIES lists every DeiT and TNT_small (not TNT_base) as published
# inference models.
_PADDLECLAS_INFERENCE = {
    name: f"{_INFERENCE_BASE}{name}_infer.tar" for name in _PADDLECLAS_PDPARAMS if name != "TNT_base"
}
# SHA-256 sums of PaddleClas's files, once someone has downloaded and checked them; an entry
# here is enforced on download.
_KNOWN_SHA256: dict[str, str] = {}

_REGISTRY: dict[str, PretrainedEntry] = {
    name: PretrainedEntry(name, url, _PADDLECLAS_INFERENCE.get(name), _KNOWN_SHA256.get(url))
    for name, url in _PADDLECLAS_PDPARAMS.items()
}


def _basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def register_pretrained(
    name: str,
    url: str | None,
    *,
    model: str | None = None,
    inference_url: str | None = None,
    sha256: str | None = None,
    inference_sha256: str | None = None,
    size: int | None = None,
) -> PretrainedEntry:
    """Adds (or replaces) the pretrained entry ``name``: weights for architecture ``model``
    (default: ``name``, which must then be a registered model) at ``url``."""
    get_spec(model or name)  # raises for an unknown architecture
    entry = PretrainedEntry(name, url, inference_url, sha256, inference_sha256, size, model or "")
    _REGISTRY[name] = entry
    return entry


def get_pretrained(name: str) -> PretrainedEntry:
    """The entry for ``name``; a clear error for models without published weights."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = ", ".join(sorted(_REGISTRY))
    if name in list_models(include_test=True):
        raise DownloadError(f"PaddleClas publishes no pretrained weights for {name}; models with weights: {known}")
    raise DownloadError(f"unknown model {name!r}; models with pretrained weights: {known}")


@dataclasses.dataclass(frozen=True)
class PretrainedStatus:
    """What :func:`list_pretrained` reports for one entry."""

    entry: PretrainedEntry
    url: str | None  # where a download would come from now (VITJAX_WEIGHTS_URL applied)
    path: Path  # where it is (or would be) cached
    cached: bool
    size: int | None  # bytes: the cached file's, else the entry's known size

    @property
    def name(self) -> str:
        return self.entry.name


def list_pretrained(cache_dir: str | os.PathLike | None = None) -> list[PretrainedStatus]:
    """Every entry, with the URL it would be fetched from, its cache path and what is cached."""
    statuses = []
    for entry in _REGISTRY.values():
        path = pdparams_path(entry, cache_dir)
        cached = path.is_file() and digest_sidecar(path).is_file()
        size = path.stat().st_size if cached else entry.size
        statuses.append(PretrainedStatus(entry, resolve_url(entry.url) if entry.url else None, path, cached, size))
    return statuses


def resolve_url(url: str) -> str:
    """``url``, or ``$VITJAX_WEIGHTS_URL/<file name>`` when a mirror base is set."""
    base = os.environ.get("VITJAX_WEIGHTS_URL", "").strip()
    return f"{base.rstrip('/')}/{_basename(url)}" if base else url


def pretrained_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory PaddleClas downloads are cached in."""
    return (Path(cache_dir).expanduser() if cache_dir else cache_root()) / "paddleclas"


def pdparams_path(entry: PretrainedEntry, cache_dir: str | os.PathLike | None = None) -> Path:
    return pretrained_cache(cache_dir) / entry.filename


def check_state_fits(path: Path, model_name: str, source: str) -> None:
    """Raises unless ``path`` parses (restricted unpickler) and holds exactly ``model_name``'s
    keys, each with the shape the model has (any number of classes, the default resolution)."""
    state = read_pdparams(path)
    has_head = "head.weight" in state
    table = key_table(model_name, has_head=has_head)
    expected = _expected_shapes(model_name, infer_num_classes(state), None)
    wanted = {rule.paddle_key for rule in table}
    missing = [rule.paddle_key for rule in table if rule.paddle_key not in state]
    unexpected = [key for key in state if key not in wanted]
    misshaped = []
    for rule in table:
        if rule.paddle_key in state:
            shape = rule.to_flax(np.asarray(state[rule.paddle_key])).shape
            if shape != expected[rule.flax_path]:
                misshaped.append((rule.paddle_key, shape, expected[rule.flax_path]))
    if missing or unexpected or misshaped:
        raise _mismatch_error(source, model_name, missing, unexpected, misshaped)


def _advice(entry: PretrainedEntry, url: str) -> str:
    return (
        f"download {url} by hand and pass it with --config.init.pdparams=FILE or "
        f"vitjax.load_pdparams(FILE, {entry.architecture!r}); or set VITJAX_WEIGHTS_URL to a mirror "
        f"that serves {_basename(url)}"
    )


def download_pretrained(
    name: str,
    *,
    quiet: bool = False,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 1.0,
) -> Path:
    """The cached ``.pdparams`` of ``name``, downloaded and checked first if need be.

    Raises :class:`~vitjax.weights.download.DownloadError` naming the URL, the HTTP status or
    network error, and what to do instead.
    """
    entry = get_pretrained(name)
    if entry.url is None:
        raise DownloadError(f"PaddleClas publishes no pretrained .pdparams for {name}")
    url = resolve_url(entry.url)
    dest = pdparams_path(entry, cache_dir)

    def verify(path: Path) -> None:
        check_state_fits(path, entry.architecture, source=path.name)

    try:
        return fetch_cached(
            url,
            dest,
            verify=verify,
            sha256=entry.sha256,
            quiet=quiet,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )
    except OfflineError:
        raise
    except DownloadError as e:
        raise type(e)(f"{e}. To work around it, {_advice(entry, url)}") from None


def load_pretrained(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    head: HeadPolicy = "strict",
    seed: int = 0,
    quiet: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Variables:
    """Flax variables of PaddleClas's pretrained ``name`` (downloaded once, then from the cache).

    ``num_classes``, ``img_size``, ``head`` and ``seed`` are those of
    :func:`vitjax.load_pdparams`: e.g. ``num_classes=10, head="reinit"`` to fine-tune with a
    new head, ``img_size=384`` to resample the position embeddings.
    """
    path = download_pretrained(name, quiet=quiet, cache_dir=cache_dir)
    return load_pdparams(
        path, get_pretrained(name).architecture, num_classes=num_classes, img_size=img_size, head=head, seed=seed
    )
