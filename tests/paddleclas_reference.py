"""PaddleClas's own model code, as the reference our models are checked against.

The ``paddleclas==2.6.0`` wheel is installed without its dependencies (its package
``__init__`` pulls in the whole training stack); we load just the files that define
the models, by path, under their real module names, so their relative imports
(``..base.theseus_layer``, ``....utils.save_load``) resolve to the real files too.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

_PACKAGES = [
    "ppcls",
    "ppcls.arch",
    "ppcls.arch.backbone",
    "ppcls.arch.backbone.base",
    "ppcls.arch.backbone.model_zoo",
    "ppcls.utils",
]


def _ppcls_root() -> Path:
    spec = importlib.util.find_spec("paddleclas")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("paddleclas==2.6.0 is not installed (pip install --no-deps paddleclas==2.6.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "ppcls"


def _package(name: str, path: Path) -> types.ModuleType:
    """An empty package whose submodules load from ``path`` (its own __init__ is not run)."""
    package = types.ModuleType(name)
    package.__path__ = [str(path)]
    package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    package.__spec__.submodule_search_locations = [str(path)]
    return package


def _ensure_packages(root: Path) -> None:
    for name in _PACKAGES:
        if name in sys.modules:
            continue
        sys.modules[name] = _package(name, root.joinpath(*name.split(".")[1:]))


def load_model_zoo(module: str) -> types.ModuleType:
    """Loads ``ppcls/arch/backbone/model_zoo/<module>.py`` (e.g. ``tnt``) by path."""
    root = _ppcls_root()
    _ensure_packages(root)
    name = f"ppcls.arch.backbone.model_zoo.{module}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "arch" / "backbone" / "model_zoo" / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def build(model_name: str, **kwargs):
    """PaddleClas's factory for ``model_name`` (``pretrained=False``), in eval mode."""
    module = "tnt" if model_name.startswith("TNT") else "distilled_vision_transformer"
    model = getattr(load_model_zoo(module), model_name)(pretrained=False, **kwargs)
    model.eval()
    return model


def build_from_arch(spec, num_classes: int = 1000):
    """PaddleClas's model classes built with one of our (test-size) architectures."""
    arch = spec.arch
    if spec.family == "tnt":
        tnt = load_model_zoo("tnt")
        model = tnt.TNT(
            img_size=arch.img_size,
            patch_size=arch.patch_size,
            embed_dim=arch.embed_dim,
            in_dim=arch.in_dim,
            depth=arch.depth,
            num_heads=arch.num_heads,
            in_num_head=arch.in_num_heads,
            qkv_bias=arch.qkv_bias,
            first_stride=arch.first_stride,
            class_num=num_classes,
        )
    else:
        dvt = load_model_zoo("distilled_vision_transformer")
        cls = dvt.DistilledVisionTransformer if arch.distilled else dvt.VisionTransformer
        model = cls(
            img_size=arch.img_size,
            patch_size=arch.patch_size,
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=arch.num_heads,
            mlp_ratio=arch.mlp_ratio,
            qkv_bias=arch.qkv_bias,
            epsilon=arch.epsilon,
            class_num=num_classes,
        )
    model.eval()
    return model


def load_deploy_preprocess() -> types.ModuleType:
    """PaddleClas's deploy-time preprocessing ops (``deploy/python/preprocess.py``)."""
    package_root = _ppcls_root().parent
    for name, sub in (
        ("paddleclas", ""),
        ("paddleclas.deploy", "deploy"),
        ("paddleclas.deploy.python", "deploy/python"),
    ):
        if name not in sys.modules:
            sys.modules[name] = _package(name, package_root / sub)
    name = "paddleclas.deploy.python.preprocess"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, package_root / "deploy" / "python" / "preprocess.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
