"""The portable JAX artifact (``interop.jax_artifact``): ``jax.export`` of the inference function.

Runs in the core environment (no Paddle, no ONNX): bit-exact with the JAX model on the CPU, runs
with ``vitjax.models`` unimportable, and a committed file written by the Python 3.11 lock's JAX
(0.10.2) loads in whatever JAX runs the tests (CI's core job: the 3.12 lock's). Its bad inputs
are one-line errors naming the file, and a failed export leaves no file.

``python tests/vitjax/test_jax_artifact.py --write-fixture`` rewrites the fixture with this JAX.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import vitjax
from interop.jax_artifact import (
    ArtifactError,
    export_jax_artifact,
    load_jax_artifact,
    read_sidecar,
    sidecar_path,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "jax_export"
FIXTURE = FIXTURES / "DeiT_test_patch8_32.jaxexport"
TEST_SIZE = ("DeiT_test_patch8_32", "DeiT_test_distilled_patch8_32", "TNT_test_patch16_32")


def init_variables(name: str, seed: int = 0, num_classes: int = 1000):
    size = vitjax.get_spec(name).img_size
    model = vitjax.create_model(name, num_classes=num_classes)
    return jax.jit(model.init)(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32))


def jax_logits(variables, name: str, images_nhwc: np.ndarray, num_classes: int = 1000) -> np.ndarray:
    """The JAX model's logits: the same function the artifact holds (weights closed over), jitted."""
    model = vitjax.create_model(name, num_classes=num_classes, matmul="xla")
    return np.asarray(jax.jit(lambda x: model.apply(variables, x))(images_nhwc))


def images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).standard_normal((n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("name", TEST_SIZE)
def test_artifact_is_bit_exact_with_the_jax_model_at_any_batch(name, tmp_path):
    variables = init_variables(name, seed=1)
    path = export_jax_artifact(variables, tmp_path / f"{name}.jaxexport", name)
    meta = read_sidecar(path)
    assert meta["model"] == name and meta["img_size"] == 32 and meta["num_classes"] == 1000
    assert meta["jax_version"] == jax.__version__ and meta["platforms"] == ["cpu", "cuda", "tpu"]
    assert meta["eval_transform"]["crop_size"] == 32 and meta["input"]["layout"] == "NHWC"
    artifact = load_jax_artifact(path)
    assert artifact.exported.platforms == ("cpu", "cuda", "tpu")
    for batch in (1, 5):
        x = images(batch, seed=batch)
        np.testing.assert_array_equal(artifact(x), jax_logits(variables, name, x))


def test_artifact_runs_with_the_model_code_unimportable(tmp_path):
    name = "TNT_test_patch16_32"
    variables = init_variables(name, seed=2)
    path = export_jax_artifact(variables, tmp_path / "tnt.jaxexport", name)
    x = images(3, seed=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", jax_logits(variables, name, x))
    loader = Path(__file__).resolve().parents[2] / "interop" / "jax_artifact.py"
    # The loader module from its file (not through the interop package, whose __init__ imports the
    # weights code), with every vitjax module and flax refused at import.
    script = f"""
import importlib.abc, importlib.util, json, sys
import numpy as np

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("vitjax", "flax", "interop"):
            raise ImportError(f"{{name}} is refused in this test")
        return None

sys.meta_path.insert(0, Refuse())
spec = importlib.util.spec_from_file_location("artifact_loader", {str(loader)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
out = module.load_jax_artifact({str(path)!r})(np.load({str(tmp_path / "x.npy")!r}))
np.save({str(tmp_path / "got.npy")!r}, out)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert "vitjax" not in modules and "flax" not in modules and "interop" not in modules
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), np.load(tmp_path / "want.npy"))


def test_a_file_written_by_jax_0_10_2_loads_in_this_jax():
    """The fixture was written by the Python 3.11 lock's JAX; CI's core job runs this on 3.12's."""
    meta = read_sidecar(FIXTURE)
    assert meta["jax_version"] == "0.10.2"
    expected = np.load(FIXTURES / "DeiT_test_patch8_32.expected.npz")
    artifact = load_jax_artifact(FIXTURE)
    got = artifact(expected["images"])
    # XLA compiles the program for this host's CPU (vector width, FMA, which matmul kernel): even the
    # same JAX gives logits a few float32 ulps apart on another CPU (6e-8 on a Zen 4 against the Intel
    # Xeon that wrote the fixture), and another XLA may also fuse or order the sums differently.
    np.testing.assert_allclose(got, expected["logits"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(-1), expected["logits"].argmax(-1))


def copy_fixture(tmp_path: Path) -> Path:
    path = tmp_path / FIXTURE.name
    path.write_bytes(FIXTURE.read_bytes())
    sidecar_path(path).write_text(sidecar_path(FIXTURE).read_text())
    return path


def test_a_file_outside_the_compatibility_window_names_both_jax_versions(tmp_path):
    path = copy_fixture(tmp_path)
    meta = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({**meta, "jax_version": "9.1.0", "calling_convention_version": 99}))
    with pytest.raises(ArtifactError) as error:
        load_jax_artifact(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: written by JAX 9.1.0")
    assert f"JAX {jax.__version__}" in message and "compatibility window" in message
    # a serialization this JAX cannot parse (here: cut short) says the same
    sidecar_path(path).write_text(json.dumps(meta))
    path.write_bytes(FIXTURE.read_bytes()[: FIXTURE.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=f"written by JAX 0.10.2, JAX {jax.__version__} cannot load it"):
        load_jax_artifact(path)


def test_a_platform_not_lowered_for_and_a_batch_above_the_limit_are_refused(tmp_path):
    name = "DeiT_test_patch8_32"
    variables = init_variables(name)
    tpu_only = export_jax_artifact(variables, tmp_path / "tpu.jaxexport", name, platforms=["tpu"])
    with pytest.raises(
        ArtifactError, match=rf"^{tmp_path}/tpu.jaxexport: lowered for tpu, not for this machine's cpu$"
    ):
        load_jax_artifact(tpu_only)(images(1))
    limited = export_jax_artifact(variables, tmp_path / "two.jaxexport", name, platforms=["cpu"], max_batch=2)
    assert load_jax_artifact(limited)(images(2)).shape == (2, 1000)
    with pytest.raises(ArtifactError, match=r"two.jaxexport: batch of 3 exceeds the limit 2 it was exported with"):
        load_jax_artifact(limited)(images(3))
    with pytest.raises(ArtifactError, match=r"input of shape \[1, 32, 32, 4\]"):
        load_jax_artifact(limited)(np.zeros((1, 32, 32, 4), np.float32))


def test_a_failed_export_leaves_no_file_and_an_existing_one_is_kept(tmp_path, monkeypatch):
    name = "DeiT_test_patch8_32"
    variables = init_variables(name)
    existing = tmp_path / "keep.jaxexport"
    existing.write_bytes(b"keep me")
    with pytest.raises(ArtifactError, match="already exists"):
        export_jax_artifact(variables, existing, name)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(ArtifactError, match="choose from cpu, cuda, rocm, tpu"):
        export_jax_artifact(variables, tmp_path / "x.jaxexport", name, platforms=["metal"])

    def broken(*args, **kwargs):
        raise NotImplementedError("no lowering for this primitive")

    monkeypatch.setattr(jax.export, "export", broken)
    with pytest.raises(ArtifactError, match=r"new.jaxexport: jax.export cannot export DeiT_test_patch8_32"):
        export_jax_artifact(variables, tmp_path / "new.jaxexport", name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.jaxexport"]


def test_a_registered_name_exports_its_pretrained_weights(tmp_path, cache, monkeypatch):
    """``SRC`` may be a model name: its pretrained weights (here served from 127.0.0.1) are downloaded."""
    from weight_server import serving

    import vitjax.weights.pretrained as pretrained

    name = "DeiT_test_distilled_patch8_32"
    variables = init_variables(name, seed=5)
    weights = tmp_path / "w.pdparams"
    vitjax.save_pdparams(variables, name, weights)
    with serving({"/w.pdparams": weights.read_bytes()}) as server:
        monkeypatch.setattr(pretrained, "_REGISTRY", dict(pretrained._REGISTRY))  # the entry below is this test's
        pretrained.register_pretrained(name, server.base + "/w.pdparams")
        path = export_jax_artifact(name, tmp_path / "p.jaxexport")
    assert read_sidecar(path)["model"] == name
    x = images(2, seed=6)
    np.testing.assert_array_equal(load_jax_artifact(path)(x), jax_logits(variables, name, x))


def test_a_missing_or_foreign_sidecar_is_one_line(tmp_path):
    path = tmp_path / "m.jaxexport"
    path.write_bytes(FIXTURE.read_bytes())
    with pytest.raises(ArtifactError, match=r"m.jaxexport: no sidecar m.jaxexport.json beside it"):
        load_jax_artifact(path)
    sidecar_path(path).write_text('{"format": "something-else"}')
    with pytest.raises(ArtifactError, match="not a vitjax-jax-export sidecar"):
        load_jax_artifact(path)


def write_fixture() -> None:
    """The committed fixture: DeiT_test_patch8_32 (10 classes, seed 0), its inputs and logits."""
    name = "DeiT_test_patch8_32"
    variables = init_variables(name, seed=0, num_classes=10)
    export_jax_artifact(variables, FIXTURE, name, overwrite=True)
    x = images(2, seed=7)
    np.savez(FIXTURES / "DeiT_test_patch8_32.expected.npz", images=x, logits=jax_logits(variables, name, x, 10))


if __name__ == "__main__" and "--write-fixture" in sys.argv:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    write_fixture()


@pytest.mark.parametrize("field, value", [("img_size", "224px"), ("num_classes", 1.5), ("max_batch", True)])
def test_a_sidecar_with_a_non_number_is_a_one_line_artifact_error(tmp_path, field, value):
    from interop.jax_artifact import FORMAT, ArtifactError, read_sidecar, sidecar_path

    blob = tmp_path / "m.jaxexport"
    blob.write_bytes(b"\0")
    meta = {"format": FORMAT, "model": "m", "img_size": 32, "num_classes": 10, "eval_transform": {}, "jax_version": "0"}
    sidecar_path(blob).write_text(json.dumps({**meta, field: value}))
    with pytest.raises(ArtifactError, match=rf"m.jaxexport.json: sidecar fields {field} must be whole numbers"):
        read_sidecar(blob)
