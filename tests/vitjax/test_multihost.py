"""Multi-host training through jax.distributed: 2 processes x 4 CPU devices on 127.0.0.1
(gloo collectives) compute exactly what one process with 8 devices computes."""

import socket
import subprocess
import sys

import pytest
from test_train import REPO, SUBPROCESS_ENV, assert_params_close, final_params

ARGS = [
    "--config.num_steps=4",
    "--config.batch_size=32",
    "--config.eval_batch_size=360",
    "--config.model.num_classes=10",
    "--config.log_every=1",
    "--config.plot=False",
    "--config.checkpoint_every=2",
    "--config.data.num_workers=1",
    "--config.sharding.strategy=fsdp",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "vitjax.main",
        "--config",
        str(REPO / "configs" / "digits.py"),
        "--workdir",
        str(workdir),
        *ARGS,
        *extra,
    ]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    single = subprocess.run(
        command(tmp_path / "single"), env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600
    )
    assert single.returncode == 0, single.stderr

    port = free_port()
    env = {**SUBPROCESS_ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    processes = [
        subprocess.Popen(
            command(
                tmp_path / "multi",
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert "mesh {'data': 8, 'model': 1}" in outputs[0]
    assert "eval at step 4" in outputs[0] and "eval at step" not in outputs[1]  # process 0 reports
    # gloo sums gradients across processes in another order than one process does: fp32 rounding.
    assert_params_close(final_params(tmp_path / "multi"), final_params(tmp_path / "single"), atol=2e-5)
