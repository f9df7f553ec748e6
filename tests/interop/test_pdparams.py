"""`.pdparams` files: exact round trips, strict mapping, and no trust in the file."""

import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import paddle
import pytest

import vitjax
from interop.paddle_models import build_paddle_model
from vitjax.weights.pdparams import PdparamsError, read_pdparams

DEIT = "DeiT_test_distilled_patch8_32"
TNT = "TNT_test_patch16_32"


@pytest.fixture
def paddle_file(tmp_path):
    """A file written by paddle.save from a PaddleClas-layout model, as PaddleClas ships them."""

    def make(name=DEIT, **kwargs):
        layer = build_paddle_model(name, **kwargs)
        path = tmp_path / f"{name}.pdparams"
        paddle.save(layer.state_dict(), str(path))
        return path

    return make


@pytest.mark.parametrize("name", [DEIT, TNT, "TNT_small"])
def test_round_trip_pdparams_to_flax_to_pdparams_is_bit_exact(name, paddle_file, tmp_path):
    src = paddle_file(name)
    out = tmp_path / "again.pdparams"
    vitjax.save_pdparams(vitjax.load_pdparams(src, name), name, out)
    before, after = paddle.load(str(src)), paddle.load(str(out))
    assert list(after) == [k for k in before if k != "StructuredToParameterName@@"]
    for key, value in after.items():
        original = before[key].numpy() if hasattr(before[key], "numpy") else before[key]
        value = value.numpy() if hasattr(value, "numpy") else value
        assert value.dtype == original.dtype and value.tobytes() == original.tobytes(), key


def test_reader_returns_arrays_in_file_order(paddle_file):
    state = read_pdparams(paddle_file(TNT))
    assert list(state)[:3] == ["cls_token", "patch_pos", "pixel_pos"]
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"head.weight": Exploit()}, protocol=4))
    with pytest.raises(PdparamsError, match=r"evil\.pdparams: refused to load: it references (posix|os)\.system"):
        vitjax.load_pdparams(path, DEIT)
    assert not marker.exists()
    # The same file really does run code under plain pickle: the test is not vacuous.
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "file is empty"),
        (b"PK\x03\x04 this is a zip", "not a .pdparams file"),
        (pickle.dumps([1, 2, 3], protocol=4), "expected a dict of arrays, found list"),
        (pickle.dumps({"head.weight": "text"}, protocol=4), "entry 'head.weight' is a str, not an array"),
        (pickle.dumps({}, protocol=4), "holds no parameters"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.pdparams"
    path.write_bytes(content)
    with pytest.raises(PdparamsError) as info:
        vitjax.load_pdparams(path, DEIT)
    message = str(info.value)
    assert message.startswith(str(path)) and problem in message and "\n" not in message


def test_truncated_and_missing_files(paddle_file, tmp_path):
    good = paddle_file(DEIT).read_bytes()
    truncated = tmp_path / "cut.pdparams"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(PdparamsError, match=r"cut\.pdparams: corrupt or truncated"):
        vitjax.load_pdparams(truncated, DEIT)
    with pytest.raises(PdparamsError, match=r"nope\.pdparams: no such file"):
        vitjax.load_pdparams(tmp_path / "nope.pdparams", DEIT)


def test_wrong_model_lists_missing_unexpected_and_misshaped_keys(paddle_file):
    path = paddle_file("DeiT_test_patch8_32")
    with pytest.raises(vitjax.WeightMismatchError) as info:
        vitjax.load_pdparams(path, TNT)
    message = str(info.value)
    assert "does not fit TNT_test_patch16_32" in message
    assert "missing keys: patch_pos, pixel_pos" in message
    assert "unexpected keys: pos_embed, patch_embed.proj.weight" in message
    with pytest.raises(vitjax.WeightMismatchError, match=r"missing keys: dist_token.*head_dist.weight"):
        vitjax.load_pdparams(path, DEIT)


def test_new_head_for_fine_tuning(paddle_file):
    path = paddle_file(DEIT)
    with pytest.raises(
        vitjax.WeightMismatchError,
        match=r"mis-shaped keys: head.weight \(64, 1000\) \(expected \(64, 10\)\).*head='reinit'",
    ):
        vitjax.load_pdparams(path, DEIT, num_classes=10)
    reinit = vitjax.load_pdparams(path, DEIT, num_classes=10, head="reinit", seed=5)["params"]
    assert reinit["head"]["kernel"].shape == (64, 10) and reinit["head_dist"]["kernel"].shape == (64, 10)
    assert np.all(reinit["head"]["bias"] == 0) and 0.01 < np.std(reinit["head"]["kernel"]) < 0.03
    skipped = vitjax.load_pdparams(path, DEIT, num_classes=10, head="skip")["params"]
    assert "head" not in skipped and "head_dist" not in skipped
    loaded = vitjax.load_pdparams(path, DEIT)["params"]
    np.testing.assert_array_equal(
        skipped["blocks_0"]["attn"]["qkv"]["kernel"], loaded["blocks_0"]["attn"]["qkv"]["kernel"]
    )


def test_save_never_leaves_a_half_written_file(paddle_file, tmp_path):
    good = vitjax.load_pdparams(paddle_file(DEIT), DEIT)
    target = tmp_path / "out.pdparams"
    vitjax.save_pdparams(good, DEIT, target)
    before = target.read_bytes()

    broken = jax.tree.map(lambda x: x, good)
    del broken["params"]["norm"]
    with pytest.raises(vitjax.WeightMismatchError, match="missing keys: norm.scale, norm.bias"):
        vitjax.save_pdparams(broken, DEIT, target)
    assert target.read_bytes() == before

    # A failure half-way through writing (here: an array that cannot be pickled,
    # reached after the earlier arrays were already written) leaves the old file.
    bad = jax.tree.map(lambda x: x, good)
    bad["params"]["norm"]["bias"] = np.array([lambda: None] * 64, dtype=object)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        vitjax.save_pdparams(bad, DEIT, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{DEIT}.pdparams", "out.pdparams"])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "interop", *map(str, args)], capture_output=True, text=True)


def test_command_line_inspect_convert_verify(paddle_file, tmp_path):
    src = paddle_file(TNT)
    result = run_cli("inspect", src)
    assert result.returncode == 0 and f"{src}: TNT_test_patch16_32, " in result.stdout

    orbax_dir = tmp_path / "vars"
    assert run_cli("convert", src, orbax_dir).returncode == 0
    back = tmp_path / "back.pdparams"
    result = run_cli("convert", orbax_dir, back, "--model", TNT)
    assert result.returncode == 0, result.stderr
    assert all(np.array_equal(a, b) for a, b in zip(read_pdparams(src).values(), read_pdparams(back).values()))

    result = run_cli("verify", back)
    assert result.returncode == 0 and "max |logit difference|" in result.stdout and "ok" in result.stdout

    bad = tmp_path / "bad.pdparams"
    bad.write_bytes(b"")
    result = run_cli("inspect", bad)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {bad}: file is empty"


def test_paddle_after_tensorflow_is_a_clear_error_not_a_crash():
    code = "import tensorflow, interop.paddle_models"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-2000:]  # a Python exception, not SIGSEGV (-11)
    assert "PaddleImportOrderError: paddle must be imported before TensorFlow" in result.stderr
