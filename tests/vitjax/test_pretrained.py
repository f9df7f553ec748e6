"""Pretrained weights by name: a checked, resumable, shared download cache.

Every download comes from a real HTTP server on 127.0.0.1 (``tests/weight_server.py``) that
serves ``.pdparams`` files written by ``vitjax.save_pdparams`` and misbehaves on request.
PaddleClas-saved files, the URL table against PaddleClas's wheel and inference models are
in ``tests/interop/test_pretrained_paddleclas.py``.
"""

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from weight_server import closed_port, serving

import vitjax
from vitjax import DownloadError, download_pretrained, list_pretrained, load_pretrained, register_pretrained
from vitjax.training import checkpoints, train
from vitjax.training.config import base_config
from vitjax.weights.download import OfflineError

TEST_MODEL = "DeiT_test_patch8_32"
FILE = f"{TEST_MODEL}_pretrained.pdparams"
PATH = f"/dygraph/{FILE}"
REPO = Path(__file__).resolve().parents[2]


def saved_weights(model_name: str, tmp_dir: Path, num_classes: int = 1000, seed: int = 0) -> tuple[dict, bytes]:
    """Random variables of ``model_name`` and their ``.pdparams`` bytes."""
    model = vitjax.create_model(model_name, num_classes=num_classes)
    size = model.arch.img_size
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
    path = tmp_dir / f"{model_name}_{num_classes}.pdparams"
    vitjax.save_pdparams(variables, model_name, path)
    return variables, path.read_bytes()


def flat(variables) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(variables["params"], sep="/").items()}


def assert_same_variables(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


@pytest.fixture(scope="module")
def test_weights(tmp_path_factory):
    return saved_weights(TEST_MODEL, tmp_path_factory.mktemp("weights"))


@pytest.fixture()
def server(test_weights, cache):
    """Serves the test model's weights; the test model's entry points at it."""
    with serving({PATH: test_weights[1]}) as srv:
        register_pretrained(TEST_MODEL, srv.base + PATH)
        yield srv


def test_first_download_then_cache_hit_with_the_server_stopped(server, test_weights, cache):
    variables, body = test_weights
    assert_same_variables(load_pretrained(TEST_MODEL, quiet=True), variables)
    cached = cache / FILE
    assert cached.read_bytes() == body
    digest = hashlib.sha256(body).hexdigest()
    assert (cache / f"{FILE}.sha256").read_text() == f"{digest}  {FILE}\n"  # sha256sum -c format
    assert server.gets(PATH) == [(None, 200)]
    status = {s.name: s for s in list_pretrained()}[TEST_MODEL]
    assert status.cached and status.path == cached and status.size == len(body)
    server.shutdown()
    server.server_close()
    assert_same_variables(load_pretrained(TEST_MODEL, quiet=True), variables)
    assert download_pretrained(TEST_MODEL, quiet=True) == cached


def test_a_dropped_connection_resumes_with_range_and_the_result_is_byte_identical(server, test_weights, cache):
    body = test_weights[1]
    cut = len(body) // 3
    server.drop_once_at = cut
    path = download_pretrained(TEST_MODEL, quiet=True)
    assert path.read_bytes() == body
    assert server.gets(PATH) == [(None, 200), (f"bytes={cut}-", 206)]
    assert sorted(p.name for p in cache.iterdir()) == [FILE, f"{FILE}.lock", f"{FILE}.sha256"]


def test_a_server_without_range_support_sends_everything_again(server, test_weights):
    body = test_weights[1]
    server.range_support = False
    server.drop_once_at = len(body) // 2
    path = download_pretrained(TEST_MODEL, quiet=True)
    assert path.read_bytes() == body
    assert server.gets(PATH) == [(None, 200), (f"bytes={len(body) // 2}-", 200)]


def test_a_download_cut_off_by_a_killed_process_is_never_taken_for_the_file_and_resumes(server, test_weights, cache):
    body = test_weights[1]
    cache.mkdir(parents=True)
    (cache / f"{FILE}.part").write_bytes(body[:12345])  # what a process killed mid-download leaves
    assert not {s.name: s for s in list_pretrained()}[TEST_MODEL].cached
    assert download_pretrained(TEST_MODEL, quiet=True).read_bytes() == body
    assert server.gets(PATH) == [("bytes=12345-", 206)]


@pytest.mark.parametrize("kind", ["html page", "truncated pickle", "another model"])
def test_a_corrupted_body_is_refused_and_nothing_is_cached(kind, server, test_weights, cache, tmp_path):
    body = test_weights[1]
    bad = {
        "html page": b"<html><body>Access denied</body></html>",
        "truncated pickle": body[: len(body) // 2],
        "another model": saved_weights("DeiT_test_distilled_patch8_32", tmp_path)[1],
    }[kind]
    server.corrupt[PATH] = bad
    with pytest.raises(DownloadError) as info:
        download_pretrained(TEST_MODEL, quiet=True)
    message = str(info.value)
    assert f"refused the download of {server.base + PATH}" in message and "nothing was cached" in message
    assert "\n" not in message and "init.pdparams" in message
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]
    del server.corrupt[PATH]  # the next call downloads the real file
    assert download_pretrained(TEST_MODEL, quiet=True).read_bytes() == body


def test_a_known_sha256_is_enforced_on_download(server, test_weights, cache):
    body = test_weights[1]
    register_pretrained(TEST_MODEL, server.base + PATH, sha256=hashlib.sha256(body).hexdigest())
    flipped = bytearray(body)
    flipped[-100] ^= 0xFF  # inside an array: still parses, keys and shapes intact
    server.corrupt[PATH] = bytes(flipped)
    with pytest.raises(DownloadError, match=r"refused the download .* SHA-256 .*nothing was cached"):
        download_pretrained(TEST_MODEL, quiet=True)
    assert not (cache / FILE).exists() and not (cache / f"{FILE}.part").exists()
    del server.corrupt[PATH]
    assert download_pretrained(TEST_MODEL, quiet=True).read_bytes() == body


def test_http_404_names_the_url_the_status_and_the_workaround(server, cache):
    url = server.base + "/dygraph/missing.pdparams"
    register_pretrained(TEST_MODEL, url)
    with pytest.raises(DownloadError) as info:
        download_pretrained(TEST_MODEL, quiet=True)
    message = str(info.value)
    assert f"HTTP 404 Not Found from {url}" in message
    assert "--config.init.pdparams=FILE" in message and "VITJAX_WEIGHTS_URL" in message
    assert server.gets("/dygraph/missing.pdparams") == [(None, 404)]  # a 404 is not retried
    assert not (cache / "missing.pdparams").exists()


def test_connection_refused_is_retried_then_names_the_url(cache):
    url = f"http://127.0.0.1:{closed_port()}{PATH}"
    register_pretrained(TEST_MODEL, url)
    with pytest.raises(DownloadError) as info:
        download_pretrained(TEST_MODEL, quiet=True, retries=2, backoff=0.01)
    message = str(info.value)
    assert f"cannot reach {url}" in message and "refused" in message.lower()
    assert "gave up after 2 attempts" in message and "init.pdparams" in message


def test_offline_mode_reads_the_cache_and_never_downloads(server, test_weights, cache, monkeypatch):
    monkeypatch.setenv("VITJAX_OFFLINE", "1")
    with pytest.raises(OfflineError, match=f"VITJAX_OFFLINE is set and {cache / FILE} is not in the cache"):
        load_pretrained(TEST_MODEL, quiet=True)
    assert server.log == []
    monkeypatch.delenv("VITJAX_OFFLINE")
    download_pretrained(TEST_MODEL, quiet=True)
    monkeypatch.setenv("VITJAX_OFFLINE", "1")
    server.shutdown()
    assert_same_variables(load_pretrained(TEST_MODEL, quiet=True), test_weights[0])


def test_a_file_corrupted_on_disk_is_detected_named_and_fetched_again(server, test_weights, cache, capfd):
    body = test_weights[1]
    path = download_pretrained(TEST_MODEL, quiet=True)
    damaged = bytearray(body)
    damaged[len(body) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    assert download_pretrained(TEST_MODEL, quiet=True).read_bytes() == body
    assert f"warning: {path}: cached file is corrupted" in capfd.readouterr().err
    assert len(server.gets(PATH)) == 2


def test_unpublished_and_unknown_models_give_clear_errors():
    with pytest.raises(DownloadError, match="PaddleClas publishes no pretrained weights for TNT_test_patch16_32"):
        load_pretrained("TNT_test_patch16_32")
    with pytest.raises(DownloadError, match="unknown model 'TNT_tiny'; models with pretrained weights: .*TNT_small"):
        load_pretrained("TNT_tiny")


def test_progress_in_a_log_is_a_few_lines_and_quiet_is_silent(server, cache, capfd):
    download_pretrained(TEST_MODEL)  # stderr is not a terminal under pytest
    lines = capfd.readouterr().err.splitlines()
    assert lines[0].startswith(f"downloading {FILE} (0.7 MB)") and lines[-1].startswith(f"  {FILE}: done")
    assert len(lines) <= 6
    (cache / FILE).unlink()
    download_pretrained(TEST_MODEL, quiet=True)
    assert capfd.readouterr().err == ""


_RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vitjax.weights.pretrained import download_pretrained, register_pretrained
    name, url, barrier, me = sys.argv[1:5]
    register_pretrained(name, url)
    Path(barrier, me).touch()
    while len(list(Path(barrier).iterdir())) < 2:  # both processes start downloading together
        time.sleep(0.01)
    print(download_pretrained(name))
""")


def test_two_processes_racing_for_one_file_end_with_one_good_copy(server, test_weights, cache, tmp_path):
    server.seconds_per_body = 2.0
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, TEST_MODEL, server.base + PATH, str(barrier), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], results
    assert {out.strip() for out, _ in results} == {str(cache / FILE)}
    assert (cache / FILE).read_bytes() == test_weights[1]
    assert server.gets(PATH) == [(None, 200)]  # the second process waited and found it cached
    assert sum("downloading" in err for _, err in results) == 1
    assert not (cache / f"{FILE}.part").exists()


# --- a full-size registered name, end to end --------------------------------------------------


@pytest.fixture(scope="module")
def deit_tiny(tmp_path_factory):
    return saved_weights("DeiT_tiny_patch16_224", tmp_path_factory.mktemp("deit_tiny"))


def test_deit_tiny_by_name_through_a_mirror_base_url(deit_tiny, cache, monkeypatch):
    """The registered PaddleClas name, its real file name, served by a mirror (VITJAX_WEIGHTS_URL)."""
    variables, body = deit_tiny
    name = "DeiT_tiny_patch16_224_pretrained.pdparams"
    with serving({f"/mirror/{name}": body}) as mirror:
        monkeypatch.setenv("VITJAX_WEIGHTS_URL", mirror.base + "/mirror/")
        status = {s.name: s for s in list_pretrained()}["DeiT_tiny_patch16_224"]
        assert status.url == f"{mirror.base}/mirror/{name}" and not status.cached
        assert_same_variables(vitjax.load_pretrained("DeiT_tiny_patch16_224", quiet=True), variables)
        tuned = vitjax.load_pretrained("DeiT_tiny_patch16_224", num_classes=10, img_size=256, head="reinit", quiet=True)
        assert len(mirror.log) == 1
    params = tuned["params"]
    assert params["head"]["kernel"].shape == (192, 10) and params["pos_embed"].shape == (1, 1 + 16 * 16, 192)
    np.testing.assert_array_equal(
        params["blocks_3"]["mlp"]["fc1"]["kernel"], variables["params"]["blocks_3"]["mlp"]["fc1"]["kernel"]
    )
    assert (cache / name).read_bytes() == body


# --- --config.init.pretrained=True --------------------------------------------------------------


def test_init_pretrained_fine_tunes_with_a_new_head_and_resolution(server, tmp_path):
    """With a zero learning rate, the trained parameters are exactly what load_pretrained gives."""
    c = base_config()
    c.model.update(name=TEST_MODEL, num_classes=10, img_size=48, drop_path_rate=0.0)
    c.init.update(pretrained=True, head="reinit")
    c.optimizer.update(schedule="constant", base_lr=0.0, warmup_epochs=0.0)
    c.augment.update(random_resized_crop=False, hflip=False)
    c.update(batch_size=16, eval_batch_size=360, num_steps=1, log_every=1, checkpoint_every=1, plot=False)
    c.data.num_workers = 1
    train.train_and_evaluate(c, tmp_path / "run")
    trained = checkpoints.load_variables(tmp_path / "run")
    expected = load_pretrained(TEST_MODEL, num_classes=10, img_size=48, head="reinit", seed=c.seed, quiet=True)
    assert_same_variables(trained, expected)
    assert server.gets(PATH) == [(None, 200)]  # training downloaded it; load_pretrained hit the cache
