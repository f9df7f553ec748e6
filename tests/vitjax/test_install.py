"""Installing vitjax into a runtime that already has its own JAX, as Colab's TPU and GPU runtimes do,
leaves that JAX alone; the accelerator extras resolve.

These build a wheel of this checkout and ask pip (``--dry-run --report``) what it would change in a
fresh environment, so they need the package index. They run in CI's Python 3.12 environment
(``make test-core``), where a JAX release other than the locked one exists within our range.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import pytest

pytestmark = pytest.mark.install

REPO = Path(__file__).resolve().parents[2]
# What a Colab runtime brings and a plain install must never replace.
RUNTIME_PACKAGES = {
    "jax",
    "jaxlib",
    "libtpu",
    "libtpu-nightly",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "tensorflow",
    "tensorflow-cpu",
}
# A JAX release inside `jax>=0.10.2`, other than the one the locked environment runs.
RUNTIME_JAX = "0.10.2"
# Colab's JAX stack for that release: the versions requirements/py3.11.txt tests together.
COLAB_STACK = (
    f"jax=={RUNTIME_JAX}",
    f"jaxlib=={RUNTIME_JAX}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
)


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=900)
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


def would_install(python: Path, *requirements: str) -> dict[str, str]:
    """{normalised name: version} of what ``pip install requirements...`` would install or change."""
    report = json.loads(run(python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", *requirements))
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in report["install"]
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, REPO)
    (built,) = out.glob("vitjax-*.whl")
    return built


def test_wheel_carries_the_native_sources_compiled_on_first_use(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"vitjax/kernels/onednn_matmul.cc", "vitjax/kernels/pillow_exact.c"} <= names


def fresh_env(root: Path, *packages: str) -> Path:
    """A new virtual environment holding ``packages``; returns its python."""
    if jax.__version__ == RUNTIME_JAX:
        pytest.skip(f"this environment runs jax {RUNTIME_JAX} itself; the test runs on Python >= 3.12 (make test-core)")
    run(sys.executable, "-m", "venv", root)
    python = root / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", *packages)
    return python


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory) -> Path:
    """Stands in for a Colab runtime: a JAX release other than ours with the JAX libraries Colab
    preinstalls beside it (Flax, Optax, Orbax), at versions made for that JAX."""
    return fresh_env(tmp_path_factory.mktemp("runtime") / "env", *COLAB_STACK)


@pytest.fixture(scope="module")
def jax_only_python(tmp_path_factory) -> Path:
    """A runtime with nothing but its own JAX (a bare GPU/TPU VM)."""
    return fresh_env(tmp_path_factory.mktemp("jax-only") / "env", *COLAB_STACK[:2])


def test_plain_install_keeps_the_runtimes_jax_and_adds_no_tensorflow(wheel, runtime_python):
    changes = would_install(runtime_python, str(wheel))
    assert "vitjax" in changes  # it does resolve the project
    assert not RUNTIME_PACKAGES & changes.keys(), {k: changes[k] for k in RUNTIME_PACKAGES & changes.keys()}
    assert not [name for name in changes if name.startswith("nvidia-")]
    version = run(runtime_python, "-c", "import jax; print(jax.__version__)").strip()
    assert version == RUNTIME_JAX


def test_beside_a_bare_jax_pinning_it_keeps_it(wheel, jax_only_python):
    """Without Flax in the runtime, pip would take the newest Flax and the JAX it needs; naming the
    runtime's JAX (the command in docs/install.md) resolves to a Flax made for it instead."""
    changes = would_install(jax_only_python, str(wheel), f"jax=={RUNTIME_JAX}")
    assert "vitjax" in changes and "flax" in changes
    assert not RUNTIME_PACKAGES & changes.keys(), {k: changes[k] for k in RUNTIME_PACKAGES & changes.keys()}


@pytest.mark.parametrize("extra, plugin", [("tpu", "libtpu"), ("cuda12", "jax-cuda12-plugin")])
def test_accelerator_extras_resolve(wheel, runtime_python, extra, plugin):
    changes = would_install(runtime_python, f"{wheel}[{extra}]")
    assert plugin in changes, sorted(changes)
