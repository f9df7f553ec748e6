"""Hostile `.pdparams` files and archives: each ends in one typed line, fast, in bounded memory.

Every reproducer below is a few bytes from the fuzzing report (issue 25) that hung, crashed,
allocated gigabytes or loaded "successfully" before the reader was rebuilt; the fuzz test at
the end runs the seeded campaign of `benchmarks.fuzz` against the core readers.
"""

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from vitjax.weights.convert import load_pdparams, state_dict_to_variables
from vitjax.weights.download import UnsafeArchiveError, safe_extract_tar
from vitjax.weights.errors import PdparamsError, WeightMismatchError
from vitjax.weights.pdparams import read_pdparams, write_pdparams

ROOT = Path(__file__).resolve().parents[2]
DEIT = "DeiT_test_patch8_32"


def text(value: str) -> bytes:
    """BINUNICODE: a string in pickle's binary form."""
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def int4(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


DTYPE_F4 = b"cnumpy\ndtype\n(" + text("f4") + b"\x89\x88tR"


def refused(path: Path, *, reason: str) -> str:
    with pytest.raises(PdparamsError) as info:
        read_pdparams(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    assert reason in message, message
    return message


def run_isolated(code: str, *, timeout: float = 60, memory_cap: int = 2 << 30) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter under an address-space cap, so a hang or crash fails the test only."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({memory_cap}, {memory_cap}))\n"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def traced_peak(fn) -> int:
    """Peak bytes allocated (Python objects and numpy buffers) while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- what Paddle writes still loads ---------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_every_protocol_paddle_writes_loads_exactly(tmp_path, protocol):
    rng = np.random.default_rng(0)
    state = {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "b": np.zeros(0, np.float32),
        "big_endian": np.arange(5, dtype=">f8"),
        "count": np.array(7, np.int64),
        "mask": np.array([True, False]),
    }
    path = tmp_path / "x.pdparams"
    path.write_bytes(pickle.dumps({**state, "StructuredToParameterName@@": {"w": "linear_0.w_0"}}, protocol=protocol))
    loaded = read_pdparams(path)
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert np.array_equal(loaded[key], value) and loaded[key].dtype == value.dtype.newbyteorder("=")
        assert loaded[key].flags.owndata and loaded[key].flags.c_contiguous and loaded[key].flags.writeable


def test_our_own_writer_round_trips(tmp_path):
    state = {"a": np.arange(12, dtype=np.float32).reshape(3, 4)}
    write_pdparams(state, tmp_path / "a.pdparams")
    assert np.array_equal(read_pdparams(tmp_path / "a.pdparams")["a"], state["a"])


# -- the reproducers of issue 25 -------------------------------------------------------------------
def test_item2_huge_memo_index_costs_no_memory(tmp_path):
    path = tmp_path / "memo.pdparams"
    path.write_bytes(b"\x80\x02}r\x00\xe1\xf5\x05.")  # EMPTY_DICT, LONG_BINPUT 100,000,000: 9 bytes
    assert len(path.read_bytes()) == 9
    peak = traced_peak(lambda: refused(path, reason="holds no parameters"))
    assert peak < 1 << 20, f"{peak} bytes for a 9-byte file (the C unpickler took 1.6 GB)"


def test_item2_object_array_through_ndarray_call_is_refused_before_allocating(tmp_path):
    path = tmp_path / "objects.pdparams"
    # {'w': numpy.ndarray((200_000_000,), numpy.dtype('O8', False, True))}: 1.6 GB of None under plain pickle
    path.write_bytes(
        b"\x80\x02}("
        + text("w")
        + b"cnumpy\nndarray\n(J\x00\xc2\xeb\x0b\x85cnumpy\ndtype\n("
        + text("O8")
        + b"\x89\x88tRtRu."
    )
    peak = traced_peak(lambda: refused(path, reason="refused to load: it calls numpy.ndarray"))
    assert peak < 1 << 20


def test_item3_zero_stride_arrays_cannot_declare_what_the_file_does_not_hold(tmp_path):
    class ZeroStrides:
        def __reduce__(self):
            return np.ndarray, ((1_000_000_000, 64), np.dtype("f4"), b"\0\0\0\0", 0, (0, 0))

    path = tmp_path / "strides.pdparams"
    path.write_bytes(pickle.dumps({"head.weight": ZeroStrides()}, protocol=4))
    refused(path, reason="it calls numpy.ndarray, which a Paddle file never contains")
    # numpy's own reconstruction pattern whose data is shorter than its shape says: refused, naming the sizes.
    from numpy._core.multiarray import _reconstruct

    class ShortData:
        def __reduce__(self):
            return _reconstruct, (np.ndarray, (0,), b"b"), (1, (4, 4), np.dtype("f4"), False, bytes(8))

    short = tmp_path / "short.pdparams"
    short.write_bytes(pickle.dumps({"w": ShortData()}, protocol=4))
    refused(short, reason="array of shape [4, 4] float32 needs 64 bytes, the file holds 8")


@pytest.mark.parametrize("depth", [1_000, 100_000, 1_000_000])
def test_item4_deeply_nested_keys_neither_crash_nor_recurse(tmp_path, depth):
    path = tmp_path / "deep.pdparams"
    path.write_bytes(b"\x80\x02}(" + b")" + b"\x85" * depth + b"K\x01u.")  # a key: a tuple `depth` deep
    result = run_isolated(
        f"""
        from vitjax.weights.pdparams import read_pdparams, PdparamsError
        try:
            read_pdparams({str(path)!r})
        except PdparamsError as e:
            print("TYPED", e)
    """,
        timeout=120,
    )
    assert result.returncode == 0, f"interpreter died ({result.returncode}): {result.stderr[-500:]}"
    assert "TYPED" in result.stdout and "nested more than" in result.stdout, result.stdout + result.stderr[-500:]


def test_shared_tuples_as_a_key_are_refused_before_hashing(tmp_path):
    # A tuple of 100 copies of a tuple of 100 copies ... 8 levels deep (2 KB): hashing it is 100^8 calls.
    def level(n: int) -> bytes:  # the tuple built in place once, then 99 memo references to it
        if n == 1:
            return b"(" + b"K\x01" * 100 + b"t"
        return b"(" + level(n - 1) + b"q" + bytes([n]) + (b"h" + bytes([n])) * 99 + b"t"

    path = tmp_path / "hash.pdparams"
    path.write_bytes(b"\x80\x02}" + level(8) + b"K\x01s.")
    assert len(path.read_bytes()) < 2500
    result = run_isolated(
        f"""
        from vitjax.weights.pdparams import read_pdparams, PdparamsError
        try:
            read_pdparams({str(path)!r})
        except PdparamsError as e:
            print("TYPED", e)
    """,
        timeout=60,
    )
    assert "TYPED" in result.stdout and "a dict key is a tuple" in result.stdout, result.stdout + result.stderr[-500:]


def test_tuples_in_data_hold_no_arrays_or_markers(tmp_path):
    path = tmp_path / "tuple.pdparams"
    path.write_bytes(pickle.dumps({"w": (np.ones(2, np.float32),)}, protocol=4))
    refused(path, reason="a tuple holds a _PendingArray where data belongs")


def test_item5_dtype_state_is_never_applied(tmp_path):
    before = (np.dtype("float32").itemsize, np.dtype("float32").alignment, np.dtype("float32").byteorder)
    path = tmp_path / "dtype.pdparams"
    # BUILD on numpy.dtype('f4') with a state numpy never writes for float32 (names, no fields, elsize 4)
    path.write_bytes(
        b"\x80\x02}("
        + text("w")
        + DTYPE_F4
        + b"(K\x03"
        + text("<")
        + b"N("
        + text("a")
        + b"tN"
        + int4(4)
        + b"K\x01K\x00tbu."
    )
    refused(path, reason="dtype 'f4' with a state numpy never writes")
    path.write_bytes(
        b"\x80\x02}(" + text("w") + DTYPE_F4 + b"(K\x03" + text("|") + b"NNN" + int4(-(2**31)) + int4(-1) + b"K\x00tbu."
    )
    refused(path, reason="dtype 'f4' with a state numpy never writes")
    assert (np.dtype("float32").itemsize, np.dtype("float32").alignment, np.dtype("float32").byteorder) == before


@pytest.mark.parametrize(
    "value, reason",
    [
        (np.array([None, "x"], dtype=object), "dtype 'O8'"),
        (np.array([1 + 2j]), "arrays of dtype 'c16'"),
        (np.array(["text"]), "dtype 'U4'"),
        (np.array([b"bytes"]), "dtype 'S5'"),
    ],
)
def test_item6_only_real_numeric_arrays_load(tmp_path, value, reason):
    path = tmp_path / "dtype.pdparams"
    path.write_bytes(pickle.dumps({"w": value}, protocol=4))
    refused(path, reason=reason)


def test_item6_nan_and_inf_are_refused_naming_the_key_unless_allowed(tmp_path):
    path = tmp_path / "nan.pdparams"
    values = np.array([1.0, np.inf, np.nan], np.float32)
    path.write_bytes(pickle.dumps({"ok": np.ones(2, np.float32), "blocks.0.attn.qkv.weight": values}, protocol=4))
    refused(path, reason="entry 'blocks.0.attn.qkv.weight' holds NaN or infinite values")
    loaded = read_pdparams(path, allow_nonfinite=True)["blocks.0.attn.qkv.weight"]
    assert np.array_equal(loaded, values, equal_nan=True)


def test_item6_float16_weights_load_as_float32_parameters(tmp_path):
    import jax

    from vitjax.models.registry import create_model
    from vitjax.weights.convert import variables_to_state_dict

    model = create_model(DEIT)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    state = {k: v.astype(np.float16) for k, v in variables_to_state_dict(variables, DEIT).items()}
    loaded = state_dict_to_variables(state, DEIT)
    leaves = jax.tree_util.tree_leaves(loaded)
    assert all(leaf.dtype == np.float32 for leaf in leaves)
    state["blocks.0.norm1.weight"] = state["blocks.0.norm1.weight"].astype(np.int32)
    with pytest.raises(WeightMismatchError, match="blocks.0.norm1.weight holds int32 values; parameters are floating"):
        state_dict_to_variables(state, DEIT)


def _deit_state():
    import jax

    from vitjax.models.registry import create_model
    from vitjax.weights.convert import variables_to_state_dict

    model = create_model(DEIT)
    return dict(variables_to_state_dict(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3))), DEIT))


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("patch_embed.proj.weight", np.ones((), np.float32), "mis-shaped keys: patch_embed.proj.weight ()"),
        (
            "patch_embed.proj.weight",
            np.ones(64 * 3 * 8 * 8, np.float32),
            "mis-shaped keys: patch_embed.proj.weight (12288,)",
        ),
        ("pos_embed", np.ones((1, 1, 64), np.float32), "mis-shaped keys: pos_embed (1, 1, 64)"),
        ("pos_embed", np.ones((1, 0, 64), np.float32), "mis-shaped keys: pos_embed (1, 0, 64)"),
    ],
)
def test_item7_misshaped_arrays_are_mismatch_errors_not_crashes(tmp_path, key, value, reason):
    state = _deit_state()
    state[key] = np.asarray(value, np.float32)
    path = tmp_path / "shapes.pdparams"
    write_pdparams(state, path)
    with pytest.raises(WeightMismatchError) as info:
        load_pdparams(path, DEIT)
    assert str(info.value).startswith(str(path)) and reason in str(info.value), str(info.value)


# -- archives -------------------------------------------------------------------------------------
def _tar_bytes(members, mode="w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "case, reason",
    [
        ("truncated", "not a usable tar archive"),
        ("garbage_gzip", "not a usable tar archive"),
        ("file_then_dir", "collides with another member"),
        ("file_under_file", "collides with another member"),
        ("twice", "collides with another member"),
        ("missing", "no such file"),
    ],
)
def test_item7_archive_failures_are_typed_and_leave_nothing_behind(tmp_path, case, reason):
    good = _tar_bytes([("model/a.bin", b"a" * 5000), ("model/b.bin", b"b" * 5000)])
    data = {
        "truncated": good[: len(good) * 2 // 3],
        "garbage_gzip": b"\x1f\x8b\x08\x00" + b"\x00garbage" * 20,
        "file_then_dir": _tar_bytes([("m/x", b"1"), ("m/x", None), ("m/x/y", b"2")]),
        "file_under_file": _tar_bytes([("m/x", b"1"), ("m/x/y", b"2")]),
        "twice": _tar_bytes([("m/x", b"1"), ("m/x", b"2")]),
    }.get(case)
    archive = tmp_path / "model.tar.gz"
    if data is not None:
        archive.write_bytes(data)
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract_tar(archive, target)
    assert str(info.value).startswith(str(archive)) and reason in str(info.value), str(info.value)
    assert list(target.iterdir()) == [], "a failed extraction left files behind"


def test_a_gnu_long_name_bomb_is_refused_without_reading_it(tmp_path):
    # A GNU long-name header declaring 1 GiB, followed by a gzip of zeros: tarfile would read it whole.
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, 1 << 30
    import gzip

    with gzip.open(tmp_path / "bomb.tar.gz", "wb") as out:
        out.write(header.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(64):
            out.write(bytes(1 << 20))
    peak = traced_peak(
        lambda: pytest.raises(
            UnsafeArchiveError, safe_extract_tar, tmp_path / "bomb.tar.gz", tmp_path / "t", max_bytes=1 << 20
        )
    )
    assert peak < 32 << 20, f"{peak} bytes traced"


def test_a_good_archive_still_extracts(tmp_path):
    archive = tmp_path / "ok.tar.xz"
    archive.write_bytes(_tar_bytes([("m", None), ("m/a.bin", b"a" * 3000), ("m/b/c.txt", b"c")], mode="w:xz"))
    files = safe_extract_tar(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["m/a.bin", "m/b/c.txt"]
    assert (tmp_path / "out/m/a.bin").read_bytes() == b"a" * 3000


@pytest.mark.parametrize(
    ("size", "limit"),
    [(200_000, 100_000), (262_144 + 5_000, 262_144 + 1_000)],  # inside the first chunk; in a chunk's tail
    ids=["mid-chunk", "chunk-tail"],
)
def test_a_target_that_cannot_be_written_is_our_error_not_the_archives(tmp_path, size, limit):
    """A full disk while extracting (a file-size limit set in a child process: EFBIG, as a real
    write fails) is an OSError naming the target file, and the half-written file is removed."""
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_tar_bytes([("m/small.txt", b"s"), ("m/big.bin", b"b" * size)]))
    target = tmp_path / "out"
    target.mkdir()
    code = (
        "import resource, signal, sys\n"
        "from vitjax.weights.download import TargetWriteError, UnsafeArchiveError, safe_extract_tar\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
        "try:\n"
        f"    safe_extract_tar({str(archive)!r}, {str(target)!r})\n"
        "except TargetWriteError as e:\n"
        "    print('target', isinstance(e, OSError) and not isinstance(e, UnsafeArchiveError), e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"target True cannot write {target / 'm' / 'big.bin'}: File too large"), done.stdout
    assert list(target.iterdir()) == [], "a failed extraction left files behind"


# -- the fuzz suite ------------------------------------------------------------------------------
@pytest.mark.parametrize("reader", ["pdparams", "tar"])
def test_seeded_fuzz_campaign_finds_nothing(reader):
    from benchmarks.fuzz import run_campaign

    report = run_campaign(reader, count=300, seed=1, case_seconds=10, total_seconds=600)
    assert report["cases"] == 300, report
    assert report["failures"] == [], report["failures"][:5]
    assert report["tally"].get("typed", 0) > 100, report["tally"]  # the mutations really reach the checks
