"""The ``serve`` command as a user runs it: its log level, and the documented curl examples.

Each test starts ``python -m interop serve`` on 127.0.0.1 (an ephemeral port) on the
test-size model and sends a bounded number of requests.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_serving import exported  # noqa: F401  (a fixture: the exported test-size model)
from testutil import serve_command

pytest.importorskip("uvicorn")

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving_hardening.md"


def stop_and_read_stderr(proc) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


@pytest.mark.parametrize("level, shown", [("info", True), ("warning", False)])
def test_log_level_decides_whether_the_servers_own_lines_are_shown(exported, level, shown):
    """A dependency (absl, through orbax) installs a root log handler at import; ``--log-level`` still applies."""
    _, model_dir = exported
    with serve_command(model_dir, "--log-level", level) as (proc, url):
        err = stop_and_read_stderr(proc)
    ready = re.search(r"^\S+ \S+ INFO interop\.serving: \S+ on onnxruntime: warmed up, ready$", err, re.M)
    assert bool(ready) == shown, err[-2000:]


def test_the_documented_json_curl_example_works_for_a_photo_larger_than_an_argument_may_be(exported, tmp_path):
    """The base64 of a 300 KB photo is over Linux's 128 KiB limit for one command-line argument."""
    _, model_dir = exported
    block = re.search(r"<!-- json-curl-example -->\s*```sh\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"{DOC} has no json-curl-example block"
    photo = np.random.default_rng(0).integers(0, 256, (400, 300, 3), np.uint8)  # noise: a PNG of ~360 KB
    Image.fromarray(photo).save(tmp_path / "cat.jpg", format="PNG")
    assert (tmp_path / "cat.jpg").stat().st_size > 300_000
    with serve_command(model_dir, "--log-level", "warning") as (proc, url):
        script = block.group(1).replace("http://127.0.0.1:8080", url)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert '"predictions"' in done.stdout and '"top_k"' in done.stdout, done.stdout[:500]


@pytest.mark.parametrize(
    "flag, value, field",
    [
        ("--decode-wait-ms", "-1", "decode_wait_ms"),
        ("--max-wait-ms", "-5", "max_wait_ms"),
        ("--timeout", "0", "request_timeout_s"),
    ],
)
def test_a_bad_batching_or_timeout_flag_is_one_line_before_the_model_loads(tmp_path, flag, value, field):
    """Refused before the source is even looked at (it does not exist here): one line, no traceback."""
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "interop", "serve", str(tmp_path / "absent"), flag, value, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("serve: ServeConfig:") and field in last, run.stderr[-2000:]
