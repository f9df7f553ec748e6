"""Modules that moved, still importable under their old names (with a ``DeprecationWarning``).

The training program's modules lived at ``vitjax``'s root until they became :mod:`vitjax.training`;
a config file or script written before (``from vitjax.configlib import imagenet_config``,
``from vitjax import train``) keeps working and is told the new name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED_MODULES = {
    **{
        name: f"vitjax.training.{name}"
        for name in (
            "checkpoints",
            "default_config",
            "evaluation",
            "experiment",
            "mixing",
            "model_init",
            "monitoring",
            "optim",
            "preemption",
            "reporting",
            "sharding",
            "steps",
            "train",
        )
    },
    "configlib": "vitjax.training.config",
}


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"{old} moved to {new}; import it from there", DeprecationWarning, stacklevel=stacklevel + 1)


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn(self.old, self.new, stacklevel=2)
        module = importlib.import_module(self.new)  # the old name becomes an alias of the new module
        self._spec = module.__spec__  # the import system sets __spec__ to the alias's: put it back after
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # already executed under its new name; reload() goes there

    def get_code(self, fullname: str):
        raise ImportError(f"{self.old} moved to {self.new}: run python -m {self.new}")


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.rpartition(".")
        if prefix != "vitjax" or name not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(fullname, MOVED_MODULES[name]))


def install_moved_module_finder() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())


def moved_module(name: str) -> ModuleType:
    """``vitjax.<name>`` for a moved module: the module at its new place, with the warning."""
    # stacklevel: this function, the package's fallback, its __getattr__ (vitjax._lazy), then the importing line
    _warn(f"vitjax.{name}", MOVED_MODULES[name], stacklevel=4)
    return importlib.import_module(MOVED_MODULES[name])
