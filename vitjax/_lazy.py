"""Packages whose public names load on first use (PEP 562): ``import vitjax`` stays cheap."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], public: dict[str, str], fallback: Callable[[str], Any] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for ``public`` (name -> the module defining it).

    A name is imported from its module when first asked for and kept in ``namespace`` (the
    package's ``globals()``), so later lookups do not come back here. Other names go to
    ``fallback`` (which raises ``AttributeError`` for what it does not know) if given, then to
    the package's submodules: ``vitjax.models`` works after a bare ``import vitjax``, as it did
    when the package imported its submodules eagerly."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name in public:
            value = getattr(importlib.import_module(public[name]), name)
            namespace[name] = value
            return value
        if fallback is not None:
            with contextlib.suppress(AttributeError):
                return fallback(name)
        if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")  # the import system sets the attribute
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
