"""Pretrained weights by name, against PaddleClas itself.

* The URL table is PaddleClas 2.6.0's: the ``MODEL_URLS`` of its model zoo files and the
  inference-model URLs of its ``paddleclas.py``, read from the installed wheel.
* A ``.pdparams`` that PaddleClas's own model code saved (``paddle.save(model.state_dict())``),
  served over HTTP on 127.0.0.1, loads by name and computes PaddleClas's logits.
* PaddleClas-style ``*_infer.tar`` inference models download, unpack safely and load; archives
  with escaping paths, links or devices are refused and leave nothing behind.
* ``python -m interop download`` / ``list-pretrained``.
"""

from __future__ import annotations

import ast
import io
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import paddle
import paddleclas_reference
import pytest
from testutil import nhwc, random_images
from weight_server import serving

import interop
import vitjax
from interop.__main__ import main as interop_main
from interop.pretrained import download_inference_model, inference_model_path, load_pretrained_inference_model
from vitjax import DownloadError, load_pretrained, register_pretrained
from vitjax.weights.download import RefusedDownload, UnsafeArchiveError, safe_extract_tar
from vitjax.weights.pretrained import get_pretrained

TEST_MODEL = "DeiT_test_patch8_32"


def _paddleclas_source(relative: str) -> Path:
    return Path(paddleclas_reference._ppcls_root()).parent / relative


def _module_constant(path: Path, name: str):
    """A literal top-level constant of a Python file, read without running the file."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} has no constant {name}")


def test_the_url_table_is_paddleclass_model_urls_for_every_registered_model():
    theirs = {}
    for module in ("tnt", "distilled_vision_transformer"):
        theirs.update(_module_constant(_paddleclas_source(f"ppcls/arch/backbone/model_zoo/{module}.py"), "MODEL_URLS"))
    for name in vitjax.list_models():
        if name in theirs:
            assert get_pretrained(name).url == theirs[name], name
        else:  # PaddleClas publishes no weights for it: a clear error, never a guessed URL
            with pytest.raises(DownloadError, match="publishes no pretrained weights"):
                get_pretrained(name)
    assert set(theirs) <= set(vitjax.list_models())


def test_the_inference_urls_are_those_of_paddleclas_py():
    source = _paddleclas_source("paddleclas.py")
    template = _module_constant(source, "IMN_MODEL_BASE_DOWNLOAD_URL")
    series = _module_constant(source, "IMN_MODEL_SERIES")
    published = set(series["DeiT"]) | set(series["TNT"])
    for name in vitjax.list_models():
        try:
            entry = get_pretrained(name)
        except DownloadError:
            continue
        expected = template.format(name) if name in published else None
        assert entry.inference_url == expected, name


@pytest.mark.parametrize("name", ["DeiT_tiny_distilled_patch16_224", "TNT_small"])
def test_weights_saved_by_paddleclas_load_by_name_and_compute_paddleclas_logits(name, cache, monkeypatch, tmp_path):
    reference = paddleclas_reference.build(name)
    path = tmp_path / f"{name}_pretrained.pdparams"
    paddle.save(reference.state_dict(), str(path))
    with serving({f"/mirror/{path.name}": path.read_bytes()}) as srv:
        monkeypatch.setenv("VITJAX_WEIGHTS_URL", srv.base + "/mirror")
        variables = load_pretrained(name, quiet=True)
        assert [p for p, _ in srv.gets(f"/mirror/{path.name}")] == [None]  # one full download
    monkeypatch.setenv("VITJAX_OFFLINE", "1")  # the second load comes from the cache
    cached = load_pretrained(name, quiet=True)
    images = random_images(name, batch=2)
    with paddle.no_grad():
        theirs = reference(paddle.to_tensor(images)).numpy()
    ours = np.asarray(vitjax.create_model(name).apply(variables, jnp.asarray(nhwc(images))))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    jax.tree.map(np.testing.assert_array_equal, cached, variables)


# --- inference models (*_infer.tar) -----------------------------------------------------------


@pytest.fixture(scope="module")
def exported_test_model(tmp_path_factory):
    """A small DeiT exported as a Paddle inference model, with the variables it came from."""
    model = vitjax.create_model(TEST_MODEL, num_classes=10)
    size = model.arch.img_size
    variables = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, size, size, 3)))
    directory = interop.export_inference_model(variables, TEST_MODEL, tmp_path_factory.mktemp("export") / "model")
    return variables, Path(directory)


def _tar(members: dict[str, bytes], *, extra=None) -> bytes:
    """A tar archive of regular files (``name -> data``); ``extra(tar)`` may add odd members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return buffer.getvalue()


def _infer_tar(directory: Path, stem: str) -> bytes:
    """PaddleClas's layout: ``<stem>/inference.*`` inside the archive."""
    return _tar({f"{stem}/{p.name}": p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()})


def test_an_inference_model_downloads_unpacks_and_loads_by_name(exported_test_model, cache):
    variables, directory = exported_test_model
    stem = f"{TEST_MODEL}_infer"
    with serving({f"/inference/{stem}.tar": _infer_tar(directory, stem)}) as srv:
        register_pretrained(TEST_MODEL, None, inference_url=f"{srv.base}/inference/{stem}.tar")
        loaded = load_pretrained_inference_model(TEST_MODEL, quiet=True)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), loaded, variables)
    where = inference_model_path(TEST_MODEL)
    assert where.is_dir() and (where.parent / f"{where.name}.sha256").is_file()
    assert not any(p.name.endswith(".part") for p in where.parent.iterdir())
    # the archive itself is not kept, and a cached model needs no server
    assert load_pretrained_inference_model(TEST_MODEL, quiet=True, verify=False) is not None


def _symlink(tar):
    info = tarfile.TarInfo("model/inference.json")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(info)


def _hardlink(tar):
    info = tarfile.TarInfo("model/inference.pdiparams")
    info.type, info.linkname = tarfile.LNKTYPE, "../../outside"
    tar.addfile(info)


def _device(tar):
    info = tarfile.TarInfo("model/dev")
    info.type = tarfile.CHRTYPE
    tar.addfile(info)


MALICIOUS = {
    "parent path": (lambda: _tar({"model/../../escaped.txt": b"x"}), "outside the target directory"),
    "absolute path": (lambda: _tar({"/tmp/vitjax-escaped.txt": b"x"}), "absolute path"),
    "symbolic link": (lambda: _tar({"model/a": b"x"}, extra=_symlink), "is a link"),
    "hard link": (lambda: _tar({"model/a": b"x"}, extra=_hardlink), "is a link"),
    "device": (lambda: _tar({"model/a": b"x"}, extra=_device), "not a regular file"),
}


@pytest.mark.parametrize("kind", sorted(MALICIOUS))
def test_safe_extract_refuses_escaping_paths_links_and_devices_before_writing(kind, tmp_path):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(MALICIOUS[kind][0]())
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UnsafeArchiveError, match=MALICIOUS[kind][1]) as error:
        safe_extract_tar(archive, target)
    assert str(archive) in str(error.value)
    assert list(target.rglob("*")) == [] and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/vitjax-escaped.txt").exists()


def test_safe_extract_bounds_members_and_bytes(tmp_path):
    archive = tmp_path / "big.tar"
    archive.write_bytes(_tar({f"m/{i}": b"0123456789" for i in range(5)}))
    with pytest.raises(UnsafeArchiveError, match="more than 4 members"):
        safe_extract_tar(archive, tmp_path / "a", max_members=4)
    with pytest.raises(UnsafeArchiveError, match="more than 40 bytes"):
        safe_extract_tar(archive, tmp_path / "b", max_bytes=40)
    assert len(safe_extract_tar(archive, tmp_path / "c")) == 5


def test_a_malicious_inference_archive_is_refused_and_nothing_is_cached(cache, tmp_path):
    stem = f"{TEST_MODEL}_infer"
    with serving({f"/inference/{stem}.tar": _tar({f"{stem}/../../../escaped.txt": b"x"})}) as srv:
        register_pretrained(TEST_MODEL, None, inference_url=f"{srv.base}/inference/{stem}.tar")
        with pytest.raises(RefusedDownload, match=r"outside the target directory.*nothing was cached") as error:
            download_inference_model(TEST_MODEL, quiet=True)
    assert f"{srv.base}/inference/{stem}.tar" in str(error.value)
    leftovers = [p for p in cache.rglob("*") if not p.name.endswith(".lock")]
    assert [p for p in leftovers if p.is_file()] == []
    assert not list(tmp_path.rglob("escaped.txt"))


def test_an_archive_without_a_model_is_refused(cache):
    stem = f"{TEST_MODEL}_infer"
    with serving({f"/inference/{stem}.tar": _tar({f"{stem}/README": b"nothing here"})}) as srv:
        register_pretrained(TEST_MODEL, None, inference_url=f"{srv.base}/inference/{stem}.tar")
        with pytest.raises(RefusedDownload, match="holds no inference model"):
            download_inference_model(TEST_MODEL, quiet=True)
    assert not inference_model_path(TEST_MODEL).exists()


# --- python -m interop download / list-pretrained ---------------------------------------------


def test_download_and_list_pretrained_commands(cache, monkeypatch, tmp_path, capsys):
    name = "DeiT_tiny_patch16_224"
    model = vitjax.create_model(name)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    path = tmp_path / f"{name}_pretrained.pdparams"
    vitjax.save_pdparams(variables, name, path)
    assert interop_main(["list-pretrained"]) == 0
    listing = capsys.readouterr().out
    assert f"weights:   {get_pretrained(name).url}" in listing and "not cached" in listing
    with serving({f"/m/{path.name}": path.read_bytes()}) as srv:
        monkeypatch.setenv("VITJAX_WEIGHTS_URL", srv.base + "/m")
        assert interop_main(["download", name, "--quiet"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"{name}: {cache / path.name}" and (cache / path.name).read_bytes() == path.read_bytes()
    assert interop_main(["list-pretrained"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith(name + " "))
    assert str(cache / path.name) in line and "MB" in line
    assert interop_main(["download", "TNT_base", "--inference"]) == 2
    assert "publishes no inference model for TNT_base" in capsys.readouterr().err
