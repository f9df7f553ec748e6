"""Writes tests/fixtures/legacy/: inference models exported by PaddleClas's own code with Paddle 2.6.

Paddle 3.3's ``paddle.jit.save`` writes only the PIR format for these models, so the
legacy-format import test needs files made by Paddle 2.x. Run this with a Paddle 2.6
interpreter (it needs numpy<2, hence its own venv), not the project's:

    python3.11 -m venv /tmp/venv-paddle26
    /tmp/venv-paddle26/bin/pip install paddlepaddle==2.6.2 "numpy<2" requests tqdm
    /tmp/venv-paddle26/bin/pip install --no-deps paddleclas==2.6.0
    /tmp/venv-paddle26/bin/python scripts/make_legacy_fixtures.py

For each test-size model it builds PaddleClas's model class with a fixed seed, wraps
it with a softmax as PaddleClas's export does, and ``jit.save``s it (``inference.pdmodel``
+ ``.pdiparams`` + ``.pdiparams.info``); beside it goes ``expected.npz``: an input batch,
PaddleClas's logits and probabilities for it, and a fingerprint of the weights (each
``state_dict`` key with the sum and the sum of squares of its array, in float64). A
second copy of the weights as ``.pdparams`` would double the fixtures' size; the
fingerprint tells apart any two parameters an importer could confuse.
The project's packages need JAX, so the architectures are restated here; the test
checks them against the registry by loading the weights strictly.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import paddle

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "legacy"
IMG_SIZE = 32
SEED = 2024
NUM_CLASSES = 10  # a small head keeps the fixtures small

# Test-size architectures of vitjax/models/registry.py, restated (this interpreter has no JAX).
DEIT_TEST = dict(
    img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, qkv_bias=True, epsilon=1e-6
)
TNT_TEST = dict(
    img_size=32,
    patch_size=16,
    embed_dim=64,
    in_dim=4,
    depth=2,
    num_heads=4,
    in_num_head=2,
    qkv_bias=False,
    first_stride=4,
)


def load_model_zoo(module: str) -> types.ModuleType:
    """PaddleClas's ``model_zoo/<module>.py`` loaded by path (its package ``__init__`` needs its whole stack)."""
    spec = importlib.util.find_spec("paddleclas")
    if spec is None:
        raise SystemExit("paddleclas is not installed in this interpreter (pip install --no-deps paddleclas==2.6.0)")
    root = Path(list(spec.submodule_search_locations)[0]) / "ppcls"
    for name in [
        "ppcls",
        "ppcls.arch",
        "ppcls.arch.backbone",
        "ppcls.arch.backbone.base",
        "ppcls.arch.backbone.model_zoo",
        "ppcls.utils",
    ]:
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = package
    name = f"ppcls.arch.backbone.model_zoo.{module}"
    spec = importlib.util.spec_from_file_location(name, root / "arch" / "backbone" / "model_zoo" / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def build(model_name: str) -> paddle.nn.Layer:
    if model_name.startswith("TNT"):
        return load_model_zoo("tnt").TNT(class_num=NUM_CLASSES, **TNT_TEST)
    dvt = load_model_zoo("distilled_vision_transformer")
    cls = dvt.DistilledVisionTransformer if "distilled" in model_name else dvt.VisionTransformer
    return cls(class_num=NUM_CLASSES, **DEIT_TEST)


class SoftmaxExport(paddle.nn.Layer):
    """What PaddleClas's export wraps a classifier in: the model, then a softmax."""

    def __init__(self, base_model: paddle.nn.Layer):
        super().__init__()
        self.base_model = base_model
        self.out_act = paddle.nn.Softmax(axis=-1)

    def forward(self, x):
        return self.out_act(self.base_model(x))


def make_fixture(model_name: str) -> Path:
    paddle.seed(SEED)
    model = build(model_name)
    model.eval()
    wrapper = SoftmaxExport(model)
    wrapper.eval()
    target = OUT / model_name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    spec = paddle.static.InputSpec(shape=[None, 3, IMG_SIZE, IMG_SIZE], dtype="float32")
    paddle.jit.save(paddle.jit.to_static(wrapper, input_spec=[spec], full_graph=True), str(target / "inference"))
    images = np.random.RandomState(SEED).standard_normal((3, 3, IMG_SIZE, IMG_SIZE)).astype(np.float32)
    with paddle.no_grad():
        logits = model(paddle.to_tensor(images)).numpy()
        probs = wrapper(paddle.to_tensor(images)).numpy()
    state = {key: value.numpy().astype(np.float64) for key, value in model.state_dict().items()}
    np.savez(
        target / "expected.npz",
        images=images,
        logits=logits,
        probs=probs,
        weight_keys=np.array(list(state)),
        weight_sums=np.array([[v.sum(), (v * v).sum()] for v in state.values()]),
    )
    return target


def main() -> None:
    print(f"paddle {paddle.__version__}")
    for name in ("DeiT_test_patch8_32", "DeiT_test_distilled_patch8_32", "TNT_test_patch16_32"):
        target = make_fixture(name)
        size = sum(f.stat().st_size for f in target.iterdir())
        print(f"{target.relative_to(ROOT)}: {sorted(f.name for f in target.iterdir())}, {size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
