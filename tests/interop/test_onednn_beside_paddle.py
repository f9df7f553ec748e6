"""The oneDNN training kernel (``model.matmul=onednn``) and Paddle, which ships its own oneDNN,
work in one process in either import order (a notebook trains, then exports with Paddle)."""

import subprocess
import sys

import pytest

SCRIPT = """
import sys
import numpy as np
import jax, jax.numpy as jnp
first, second = sys.argv[1:]

def kernel():
    from vitjax.kernels import onednn
    a = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    b = np.ones((1, 4, 2), np.float32)
    out = jax.jit(onednn.matmul)(a, b)
    assert np.array_equal(np.asarray(out), a @ b), out
    return onednn.load()

def paddle():
    import paddle
    x = paddle.to_tensor(np.ones((2, 8), np.float32))
    layer_norm = paddle.nn.LayerNorm(8)  # a oneDNN-backed op in Paddle's CPU build
    assert layer_norm(x).shape == [2, 8]

for step in (first, second):
    {"kernel": kernel, "paddle": paddle}[step]()
print("ok")
"""


@pytest.mark.parametrize("order", [("kernel", "paddle"), ("paddle", "kernel")], ids=["kernel-first", "paddle-first"])
def test_kernel_and_paddle_load_in_either_order(order):
    from vitjax.kernels import onednn

    if not onednn.available():
        pytest.skip(onednn.unavailable_reason())
    done = subprocess.run([sys.executable, "-c", SCRIPT, *order], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
