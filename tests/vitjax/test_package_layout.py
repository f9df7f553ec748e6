"""The package's layout is its architecture (docs/architecture.md): layers import downward only,
each public function has one door, and moved modules still import under their old names.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import vitjax

REPO = Path(__file__).resolve().parents[2]

# vitjax's layers, lowest first: a module may import its own layer and the layers below it.
LAYERS = [
    {"vitjax.files", "vitjax.hostmem", "vitjax.cpu_threads", "vitjax.eval_transform", "vitjax._moved", "vitjax._lazy"},
    {"vitjax.kernels"},
    {"vitjax.models"},
    {"vitjax.weights", "vitjax.data"},
    {"vitjax.training"},
    {"vitjax.explain"},
    {"vitjax.main"},
]


def layer_of(module: str) -> int:
    parts = module.split(".")
    for depth in (2, 1):
        name = ".".join(parts[:depth])
        for level, members in enumerate(LAYERS):
            if name in members:
                return level
    raise AssertionError(f"{module} is in no layer of LAYERS: add it to the architecture")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every vitjax/interop module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "vitjax":  # `from vitjax import explain`: a submodule
                found |= {f"vitjax.{alias.name}" for alias in node.names if (REPO / "vitjax" / alias.name).exists()}
                found |= {
                    f"vitjax.{alias.name}" for alias in node.names if (REPO / "vitjax" / f"{alias.name}.py").exists()
                }
    return {m for m in found if m.split(".")[0] in ("vitjax", "interop") and m != "vitjax"}


def vitjax_modules() -> list[Path]:
    return sorted(p for p in (REPO / "vitjax").rglob("*.py") if p.name != "__init__.py" or p.parent.name != "vitjax")


@pytest.mark.parametrize("path", vitjax_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_vitjax_modules_import_only_their_layer_and_below(path):
    me = module_name(path)
    for other in imported_modules(path):
        assert not other.startswith("interop"), f"{me} imports {other}: vitjax never imports interop"
        assert layer_of(other) <= layer_of(me), f"{me} (layer {layer_of(me)}) imports {other} (layer {layer_of(other)})"


def test_the_root_holds_the_entry_points_and_base_helpers_only():
    root = sorted(p.name for p in (REPO / "vitjax").glob("*.py"))
    assert root == [
        "__init__.py",
        "_lazy.py",
        "_moved.py",
        "cpu_threads.py",
        "eval_transform.py",
        "explain.py",
        "files.py",
        "hostmem.py",
        "main.py",
    ]


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_vitjax_loads_neither_jax_nor_the_training_program():
    out = run_python(
        "import sys, vitjax; print(sorted(m for m in ('jax', 'flax', 'vitjax.models', 'vitjax.training') if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_every_public_name_resolves_to_the_object_its_module_defines():
    import importlib

    for name in vitjax.__all__:
        obj = getattr(vitjax, name)
        assert obj is getattr(importlib.import_module(vitjax._PUBLIC[name]), name)
    assert set(vitjax.__all__) <= set(dir(vitjax))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        vitjax.no_such_name  # noqa: B018


def test_the_weights_api_has_one_door_vitjax():
    import interop

    for name in ("load_pdparams", "save_pdparams", "load_pretrained", "read_pdparams", "WeightsError"):
        assert name in vitjax.__all__
        assert name not in interop.__all__ and name not in dir(interop)
    out = run_python(
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from vitjax.weights import load_pdparams, DownloadError\n"
        "import vitjax\n"
        "print(load_pdparams is vitjax.load_pdparams, DownloadError is vitjax.DownloadError, len(caught))\n"
        "print(caught[0].message)"
    )
    assert out.splitlines() == ["True True 2", "vitjax.weights.load_pdparams is vitjax.load_pdparams; use that"]


def test_subpackages_are_attributes_after_a_bare_import_as_before():
    out = run_python(
        "import vitjax, interop\n"
        "print(vitjax.models.get_spec is vitjax.get_spec, vitjax.weights.convert.load_pdparams is vitjax.load_pdparams,"
        " vitjax.hostmem.keep_freed_memory is vitjax.keep_freed_memory,"
        " interop.errors.InteropError is interop.InteropError,"
        " interop.inference.export_onnx is interop.export_onnx)"
    )
    assert out.strip() == "True True True True True"


def test_old_interop_weight_names_still_work_and_say_where_they_moved():
    import interop

    with pytest.warns(DeprecationWarning, match=r"interop.load_pdparams is vitjax.load_pdparams"):
        assert interop.load_pdparams is vitjax.load_pdparams


@pytest.mark.parametrize(
    ("old", "new"),
    [("vitjax.configlib", "vitjax.training.config"), ("vitjax.train", "vitjax.training.train")],
)
def test_a_moved_module_imports_under_its_old_name_with_a_warning(old, new):
    out = run_python(
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({new!r})\n"
        "print(old is new, new.__spec__.name, [str(w.message) for w in caught])\n"
    )
    assert out.startswith(f"True {new} ") and f"{old} moved to {new}" in out


def test_from_vitjax_import_a_moved_module_warns_once():
    out = run_python(
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from vitjax import checkpoints\n"
        "import vitjax.training.checkpoints as new\n"
        "print(checkpoints is new, len(caught), caught[0].filename)"
    )
    assert out.split() == ["True", "1", "<string>"]  # one warning, pointing at the importing line


def test_serving_a_portable_artifact_loads_no_model_code():
    """The deploy predictor and the server's modules, on a jax.export file: no vitjax.models, no Flax, no Paddle."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    fixture = REPO / "tests" / "fixtures" / "jax_export" / "DeiT_test_patch8_32.jaxexport"
    out = run_python(
        "import sys, numpy as np\n"
        "from interop.portable import portable_predictor\n"
        "import interop.serving.app, interop.serving.cli\n"
        f"predictor, name, _, transform = portable_predictor({str(fixture)!r}, 'jax-export')\n"
        "logits = predictor.predict(np.zeros((2, 3, transform.crop_size, transform.crop_size), np.float32))\n"
        "print(name, logits.shape, sorted(m for m in ('vitjax.models', 'flax', 'paddle', 'tensorflow') if m in sys.modules))"
    )
    assert out.strip() == "DeiT_test_patch8_32 (2, 10) []"


def api_reference_members(package: str) -> set[str]:
    """The names docs/api.md lists under ``::: <package>``."""
    text = (REPO / "docs" / "api.md").read_text()
    block = text.split(f"::: {package}\n", 1)[1].split(":::", 1)[0].split("\n## ", 1)[0]
    return {line.strip()[2:] for line in block.splitlines() if line.strip().startswith("- ")}


def test_the_api_reference_lists_every_public_name():
    import interop

    assert api_reference_members("vitjax") == set(vitjax.__all__)
    assert api_reference_members("interop") == set(interop.__all__)


@pytest.mark.parametrize("name", ["fused_attention", "thread_pinning", "train_matmuls", "train_step_control"])
def test_a_moved_benchmark_still_runs_under_its_old_command_and_says_where_it_went(name):
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"benchmarks.{name} moved to benchmarks.studies.{name}" in done.stderr and "usage:" in done.stdout
