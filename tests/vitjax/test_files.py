"""vitjax.files: a file or directory appears complete, or the target is left as it was."""

import pytest

from vitjax.files import atomic_directory, atomic_file


def test_an_atomic_file_appears_only_when_the_block_completes(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.exists() and tmp != target
        tmp.write_bytes(b"complete")
        assert not target.exists()
    assert target.read_bytes() == b"complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_failed_atomic_file_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("half-way")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_atomic_file_replaces_an_existing_one(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_an_atomic_file_needs_its_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_file(tmp_path / "missing" / "out.bin"):
            pass


def test_an_atomic_directory_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as tmp:
        assert tmp.is_dir() and list(tmp.iterdir()) == []
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_atomic_directory_leaves_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match="refused"):
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "part.txt").write_text("part")
            raise ValueError("refused")
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_and_directories_get_the_modes_of_ordinary_ones(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "w.pdparams") as tmp:
            tmp.write_bytes(b"x")
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "inference.json").write_text("{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "w.pdparams").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
