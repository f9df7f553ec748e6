"""Hostile inference-model files (`.pdiparams`, `.pdiparams.info`) and images: typed, fast, bounded.

The reproducers are issue 25's: a 33-byte `.pdiparams` whose negative dimension walked the
reader backwards forever, sizes past 2^63, a megabyte of varint continuation bytes; then the
seeded fuzz campaign of `benchmarks.fuzz` against these readers and the image decoder.
"""

import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from benchmarks.fuzz import pdiparams_record, run_campaign
from interop.errors import InferenceModelError
from interop.inference.pdiparams import read_structured_names, scan_params_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "legacy"
# u32 version, u64 LoD levels, u32 tensor version, i32 description size, TensorDesc{data_type: FP32, dims: [-1]}
NEGATIVE_DIM = struct.pack("<IQIi", 0, 0, 0, 13) + b"\x08\x05" + b"\x10" + b"\xff" * 9 + b"\x01"


def record(desc: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<IQIi", 0, 0, 0, len(desc)) + desc + data


def scan_in_subprocess(path: Path, timeout: float = 60) -> str:
    """scan_params_file in a fresh interpreter under a 1 GiB cap: a hang or runaway allocation fails the test."""
    code = (
        f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({1 << 30}, {1 << 30}))\n"
        "from interop.inference.pdiparams import scan_params_file\nfrom interop.errors import InferenceModelError\n"
        f"try:\n    scan_params_file({str(path)!r})\nexcept InferenceModelError as e:\n    print('TYPED', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-800:]
    return result.stdout


def test_item1_the_33_byte_negative_dimension_file_is_refused_at_once(tmp_path):
    assert len(NEGATIVE_DIM) == 33
    path = tmp_path / "inference.pdiparams"
    path.write_bytes(NEGATIVE_DIM)
    out = scan_in_subprocess(path)
    assert out.startswith(f"TYPED {path}: truncated or corrupt parameters file (negative dimension -1)"), out


def test_item1_appended_to_a_valid_file_too(tmp_path):
    valid = (FIXTURES / "DeiT_test_patch8_32" / "inference.pdiparams").read_bytes()
    path = tmp_path / "inference.pdiparams"
    path.write_bytes(valid + NEGATIVE_DIM)
    out = scan_in_subprocess(path)
    assert "TYPED" in out and "negative dimension" in out, out
    assert len(scan_params_file(FIXTURES / "DeiT_test_patch8_32" / "inference.pdiparams")) > 10  # the valid part reads


@pytest.mark.parametrize(
    "desc, reason",
    [
        (b"\x08\x05\x10" + (1 << 63).to_bytes(8, "little") * 0 + b"\x80" * 9 + b"\x01", "negative dimension"),  # 2^63
        (b"\x08\x05\x10" + b"\xff" * 8 + b"\x3f", "needs"),  # 2^62 - 1 elements: more than the file holds
        (b"\x08\x05\x10" + b"\xff" * (1 << 20), "longer than 10 bytes"),  # a megabyte of continuation bytes
        (b"\x08\x05\x12\x7f\x01", "runs past the end"),  # packed dims longer than the description
        (b"\x08\x63\x10\x01", "unknown tensor data type 99"),
        (b"\x08\x05" + b"\x10\x01" * 40, "more than 32 dimensions"),
    ],
)
def test_item7_sizes_and_varints_are_checked_before_use(tmp_path, desc, reason):
    path = tmp_path / "x.pdiparams"
    path.write_bytes(record(desc, b"\0" * 16))
    out = scan_in_subprocess(path, timeout=30)
    assert out.startswith(f"TYPED {path}:") and reason in out, out


def test_lod_levels_and_sizes_cannot_run_past_the_end(tmp_path):
    path = tmp_path / "lod.pdiparams"
    path.write_bytes(struct.pack("<IQ", 0, 1 << 60) + b"\0" * 40)
    assert "LoD levels cannot fit" in scan_in_subprocess(path)
    path.write_bytes(struct.pack("<IQQ", 0, 1, (1 << 64) - 1) + b"\0" * 40)
    assert "runs past the end" in scan_in_subprocess(path)


def test_the_fuzz_seeds_frame_tensors_exactly_as_paddle_does():
    """The fuzz seeds' `.pdiparams` records are byte-identical to Paddle 2.6's, header and data."""
    import numpy as np

    real = (FIXTURES / "DeiT_test_patch8_32" / "inference.pdiparams").read_bytes()
    pos = 0
    for _dtype, shape in scan_params_file(FIXTURES / "DeiT_test_patch8_32" / "inference.pdiparams")[:5]:
        header_size = len(pdiparams_record(np.zeros(shape, np.float32))) - 4 * int(np.prod(shape))
        data = np.frombuffer(real, np.float32, count=int(np.prod(shape)), offset=pos + header_size).reshape(shape)
        ours = pdiparams_record(data)
        assert real[pos : pos + len(ours)] == ours
        pos += len(ours)


def test_info_files_run_nothing_and_cost_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "inference.pdiparams.info"
    path.write_bytes(
        b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(f"touch {marker}")) + f"touch {marker}".encode() + b"\x85R."
    )
    with pytest.raises(InferenceModelError, match=r"info: unreadable .pdiparams.info \(it references os.system"):
        read_structured_names(path)
    assert not marker.exists()
    path.write_bytes(b"\x80\x02}r\x00\xe1\xf5\x05.")
    tracemalloc.start()
    try:
        assert read_structured_names(path) == {}
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_a_hostile_pdiparams_in_a_model_directory_stops_the_import_with_one_line(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(FIXTURES / "DeiT_test_patch8_32", model)
    with open(model / "inference.pdiparams", "ab") as f:
        f.write(NEGATIVE_DIM)
    result = subprocess.run(
        [sys.executable, "-m", "interop", "import", str(model), str(tmp_path / "out.pdparams")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "inference.pdiparams: truncated or corrupt parameters file (negative dimension -1)" in last, result.stderr[
        -800:
    ]
    assert "Traceback" not in result.stderr and not (tmp_path / "out.pdparams").exists()


@pytest.mark.parametrize("reader", ["pdiparams", "info", "program", "image"])
def test_seeded_fuzz_campaign_finds_nothing(reader):
    report = run_campaign(reader, count=300, seed=1, case_seconds=10, total_seconds=600)
    assert report["cases"] == 300, report
    assert report["failures"] == [], report["failures"][:5]
    assert report["tally"].get("typed", 0) > 100, report["tally"]


# -- program files ------------------------------------------------------------------------------
from interop.inference.program_check import MAX_JSON_DEPTH, check_program_file, json_depth  # noqa: E402


def test_real_programs_pass_the_framing_check(tmp_path):
    for name in ("DeiT_test_patch8_32", "TNT_test_patch16_32"):
        check_program_file(FIXTURES / name / "inference.pdmodel")
    import jax
    import numpy as np

    import interop
    from vitjax.models.registry import create_model

    model = create_model("DeiT_test_patch8_32")
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    out = interop.export_inference_model(variables, "DeiT_test_patch8_32", tmp_path / "pir")
    program = Path(out) / "inference.json"
    check_program_file(program)
    import json

    assert 2 < json_depth(json.loads(program.read_bytes())) <= MAX_JSON_DEPTH // 2


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("inference.json", b"[" * 200_000 + b"]" * 200_000, "JSON nested deeper than"),
        ("inference.json", b'{"a":' * 100 + b"1" + b"}" * 100, "JSON nested 100 deep (at most 64)"),
        ("inference.json", b'"' + b'\\"' * 200_000, "invalid JSON"),  # an unclosed string: once quadratic
        ("inference.json", b'{"a": [1, 2', "invalid JSON"),
        ("inference.json", b"[1, 2]", "a JSON list, not an object"),
        ("inference.json", b"\xff\xfe{}", "invalid JSON"),
        ("inference.json", b"", "file is empty"),
        ("inference.pdmodel", b"\x0a\xff\xff\xff\x0f", "runs past the end"),
        ("inference.pdmodel", b"\x0b\x00", "wire type 3"),
        ("inference.pdmodel", b"\x08" + b"\xff" * 20, "longer than 10 bytes"),
    ],
)
def test_damaged_program_files_are_refused_before_paddle_parses_them(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InferenceModelError) as info:
        check_program_file(path)
    assert str(info.value).startswith(str(path)) and reason in str(info.value), str(info.value)


def test_a_truncated_legacy_program_stops_the_predictor_with_one_line(tmp_path):
    from interop.deploy import PaddleInferencePredictor

    model = tmp_path / "model"
    shutil.copytree(FIXTURES / "DeiT_test_patch8_32", model)
    program = model / "inference.pdmodel"
    program.write_bytes(program.read_bytes()[:-7])
    with pytest.raises(InferenceModelError, match=r"inference.pdmodel: not a Paddle program \(corrupt protobuf"):
        PaddleInferencePredictor(model)
