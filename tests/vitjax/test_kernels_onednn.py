"""oneDNN's matmul as an XLA custom call (``vitjax.kernels.onednn``, ``model.matmul="onednn"``).

The kernel computes what XLA computes (fp32, up to summation order), forward and backward, inside
jitted models and training steps; it is built once per cache and refuses clearly when it cannot be.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from testutil import skip_module_unless_onednn_kernel_builds

import vitjax
from vitjax.training.model_init import resolve_matmul

skip_module_unless_onednn_kernel_builds()

from vitjax.kernels import build as kernel_build  # noqa: E402
from vitjax.kernels import onednn  # noqa: E402

MODEL = "DeiT_test_patch8_32"


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# The kernel cuts each matmul into tiles for XLA's threads: over the batch (6 entries), the rows
# (37 rows, batch 3) or the columns (70 columns, 13 rows); every cut reads both transposes.
@pytest.mark.parametrize("batch, m, k, n", [(3, 37, 19, 11), (6, 37, 19, 11), (1, 13, 19, 70), (1, 1, 5, 1)])
@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_matmul_reads_transposed_operands_in_place_and_equals_numpy(batch, m, k, n, transpose_a, transpose_b):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, k, m) if transpose_a else (batch, m, k), np.float32)
    b = rng.standard_normal((batch, n, k) if transpose_b else (batch, k, n), np.float32)
    expected = np.matmul(a.swapaxes(1, 2) if transpose_a else a, b.swapaxes(1, 2) if transpose_b else b)
    call = jax.jit(lambda x, y: onednn.matmul(x, y, transpose_a, transpose_b))
    out = np.asarray(call(a, b))
    assert out.shape == (batch, m, n)
    assert rel_err(out, expected) < 1e-6
    assert np.array_equal(np.asarray(call(a, b)), out)  # however the tiles were shared out


def test_matmul_scales_its_result_as_a_multiply_after_it_would():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 30, 64), np.float32), rng.standard_normal((4, 30, 64), np.float32)
    scale = 64**-0.5
    scaled = jax.jit(lambda x, y: onednn.matmul(x, y, transpose_b=True, alpha=scale))(a, b)
    after = jax.jit(lambda x, y: onednn.matmul(x, y, transpose_b=True) * scale)(a, b)
    np.testing.assert_array_equal(scaled, after)
    odd = jax.jit(lambda x, y: onednn.matmul(x, y, transpose_b=True, alpha=6**-0.5))(a, b)
    assert rel_err(odd, np.matmul(a, b.swapaxes(1, 2)) * 6**-0.5) < 1e-6


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_matmul_runs_on_xla_s_threads_and_starts_none_of_its_own():
    script = """
import os, jax, jax.numpy as jnp
from vitjax.kernels import onednn
onednn.load()
a = jnp.ones((1, 512, 512), jnp.float32)
jax.jit(lambda x: x @ x)(a).block_until_ready()  # XLA's thread pool exists
before = len(os.listdir("/proc/self/task"))
for i in range(3):
    jax.jit(lambda x: onednn.matmul(x, x))(a + i).block_until_ready()
print(before, len(os.listdir("/proc/self/task")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after = done.stdout.split()
    assert after == before  # no OpenMP team, no executor thread of its own


def test_matmul_refuses_mismatched_shapes_and_other_dtypes_by_name():
    a = jnp.ones((1, 4, 5), jnp.float32)
    with pytest.raises(ValueError, match=r"shapes do not match: \[1, 4, 5\]"):
        onednn.matmul(a, jnp.ones((1, 4, 3), jnp.float32))
    with pytest.raises(ValueError, match="float32"):
        onednn.matmul(a.astype(jnp.bfloat16), jnp.ones((1, 5, 3), jnp.bfloat16))


def test_dense_dot_general_forward_and_gradients_equal_xla():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 24), np.float32)
    w = rng.standard_normal((24, 40), np.float32) * 0.1
    g = rng.standard_normal((2, 9, 40), np.float32)
    dims = (((2,), (0,)), ((), ()))

    def loss(dot_general):
        return lambda x, w: jnp.vdot(dot_general(x, w, dims), g)

    ours = jax.jit(jax.value_and_grad(loss(onednn.dense_dot_general), argnums=(0, 1)))(x, w)
    xla = jax.jit(jax.value_and_grad(loss(jax.lax.dot_general), argnums=(0, 1)))(x, w)
    assert rel_err(ours[0], xla[0]) < 1e-6
    for a, b in zip(ours[1], xla[1], strict=True):
        assert rel_err(a, b) < 1e-6
    hlo = jax.jit(jax.value_and_grad(loss(onednn.dense_dot_general), argnums=(0, 1))).lower(x, w).as_text()
    assert hlo.count(onednn.TARGET) == 3  # forward, input gradient, weight gradient: no XLA dot left


def test_dense_dot_general_leaves_other_dtypes_and_contractions_to_xla():
    x16 = jnp.ones((4, 8), jnp.bfloat16)
    hlo = jax.jit(lambda a: onednn.dense_dot_general(a, a.T, (((1,), (0,)), ((), ())))).lower(x16).as_text()
    assert onednn.TARGET not in hlo
    x = jnp.ones((2, 4, 8), jnp.float32)
    batched = (((2,), (2,)), ((0,), (0,)))
    hlo = jax.jit(lambda a: onednn.dense_dot_general(a, a, batched)).lower(x).as_text()
    assert onednn.TARGET not in hlo


def test_dense_dot_general_takes_empty_inputs():
    dims = (((1,), (0,)), ((), ()))
    no_features = jax.jit(lambda x, w: onednn.dense_dot_general(x, w, dims))(jnp.ones((13, 0)), jnp.ones((0, 9)))
    np.testing.assert_array_equal(no_features, np.zeros((13, 9), np.float32))  # an empty sum
    assert jax.jit(lambda x, w: onednn.dense_dot_general(x, w, dims))(jnp.ones((0, 5)), jnp.ones((5, 3))).shape == (
        0,
        3,
    )
    d_w = jax.grad(lambda x, w: onednn.dense_dot_general(x, w, dims).sum(), argnums=1)(
        jnp.ones((0, 5)), jnp.ones((5, 3))
    )
    np.testing.assert_array_equal(d_w, np.zeros((5, 3), np.float32))


def attention_reference(q, k, v, slots):
    """softmax(q k^T / sqrt(d)) v per batch entry and head, in float64, from packed projections."""
    q, k, v = (np.asarray(x, np.float64)[:, :, s] for x, s in zip((q, k, v), slots, strict=True))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


# Tiles: heads x batch below the thread count cuts the query rows (1 x 3 heads, 37 tokens);
# many short sequences group batch entries (40 x 16 tokens, TNT's inner attention); odd sizes.
@pytest.mark.parametrize(
    "batch, tokens, heads, head_dim", [(1, 37, 3, 8), (6, 37, 2, 8), (40, 16, 4, 6), (3, 5, 2, 4), (1, 1, 1, 1)]
)
def test_attention_takes_q_k_v_from_packed_projections_and_equals_softmax_attention(batch, tokens, heads, head_dim):
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((batch, tokens, 3, heads, head_dim), np.float32) * 2
    v_alone = rng.standard_normal((batch, tokens, 1, heads, head_dim), np.float32)
    scale = head_dim**-0.5
    cases = {  # DeiT's one qkv array; TNT's qk and v; any slot order
        "qkv": ((qkv, qkv, qkv), (0, 1, 2)),
        "qk+v": ((qkv[:, :, :2], qkv[:, :, :2], v_alone), (0, 1, 0)),
        "permuted": ((qkv, qkv, qkv), (2, 0, 1)),
    }
    for name, (sources, slots) in cases.items():
        call = jax.jit(lambda q, k, v, slots=slots: onednn.attention(q, k, v, slots, scale))
        out = np.asarray(call(*sources))
        assert out.shape == (batch, tokens, heads, head_dim), name
        assert rel_err(out, attention_reference(*sources, slots)) < 1e-5, name
        assert np.array_equal(np.asarray(call(*sources)), out), name  # however the tiles were shared out


def test_attention_refuses_mismatched_projections_by_name():
    qkv = jnp.zeros((2, 5, 3, 4, 8), jnp.float32)
    with pytest.raises(ValueError, match=r"attention: v \[2, 5, 1, 4, 6\]"):
        onednn.attention(qkv, qkv, jnp.zeros((2, 5, 1, 4, 6), jnp.float32), (0, 1, 0))
    with pytest.raises(ValueError, match=r"attention: k .*slot 3"):
        onednn.attention(qkv, qkv, qkv, (0, 3, 2))
    with pytest.raises(ValueError, match="float32"):
        onednn.attention(qkv.astype(jnp.bfloat16), qkv, qkv)


@pytest.mark.parametrize("shape", [(2, 17, 3, 8), (12, 16, 4, 6)], ids=["deit-like", "tnt-inner-like"])
def test_fused_attention_runs_forward_only_and_training_keeps_the_unfused_attention(shape):
    """The model's attention with oneDNN: one fused call when nothing differentiates it; under
    jax.grad the unfused attention and its closed-form backward, so training is unchanged."""
    from vitjax.models.layers import multi_head_attention, packed_multi_head_attention

    batch, tokens, heads, head_dim = shape
    qkv = jax.random.normal(jax.random.key(0), (batch, tokens, 3, heads, head_dim)) * 2
    weights = jax.random.normal(jax.random.key(1), shape)
    fused = lambda x: packed_multi_head_attention(x, x, x, (0, 1, 2), matmul="onednn")  # noqa: E731
    unfused = lambda x: multi_head_attention(x[:, :, 0], x[:, :, 1], x[:, :, 2], matmul="onednn")  # noqa: E731
    forward = jax.jit(fused).lower(qkv).as_text()
    assert forward.count(onednn.ATTENTION_TARGET) == 1 and onednn.TARGET not in forward
    assert rel_err(jax.jit(fused)(qkv), jax.jit(unfused)(qkv)) < 1e-6
    grad = jax.jit(jax.grad(lambda x, f: jnp.sum(f(x) * weights), argnums=0), static_argnums=1)
    assert onednn.ATTENTION_TARGET not in grad.lower(qkv, fused).as_text()
    np.testing.assert_array_equal(grad(qkv, fused), grad(qkv, unfused))
    # attention dropout, or another dtype, never takes the fused call
    bf16 = jax.jit(fused).lower(qkv.astype(jnp.bfloat16)).as_text()
    assert onednn.ATTENTION_TARGET not in bf16
    dropped = jax.jit(lambda x: packed_multi_head_attention(x, x, x, (0, 1, 2), lambda w: w * 0.5, "onednn"))
    assert onednn.ATTENTION_TARGET not in dropped.lower(qkv).as_text()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(2).standard_normal((4, 32, 32, 3), np.float32)


def test_model_with_onednn_matmuls_has_the_same_parameters_and_logits(images):
    xla_model, dnnl_model = vitjax.create_model(MODEL), vitjax.create_model(MODEL, matmul="onednn")
    params = jax.jit(xla_model.init)(jax.random.key(0), images[:1])
    same_init = jax.jit(dnnl_model.init)(jax.random.key(0), images[:1])
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, same_init))
    ours = jax.jit(dnnl_model.apply)(params, images)
    xla = jax.jit(xla_model.apply)(params, images)
    assert float(jnp.abs(ours - xla).max()) <= 1e-4  # the fp32 parity bar; observed ~1e-6
    hlo = jax.jit(dnnl_model.apply).lower(params, images).as_text()
    depth = vitjax.get_spec(MODEL).arch.depth
    assert hlo.count(onednn.TARGET) == depth * 4 + 1  # per block 4 dense layers, and the head
    assert hlo.count(onednn.ATTENTION_TARGET) == depth  # per block one fused attention


@pytest.mark.parametrize("name", [MODEL, "TNT_test_patch16_32"])
def test_training_steps_with_onednn_matmuls_follow_xla_s_losses(name):
    spec = vitjax.get_spec(name)
    x = np.random.default_rng(3).standard_normal((4, spec.img_size, spec.img_size, 3), np.float32)
    y = np.arange(4, dtype=np.int32) % 10
    tx = optax.adamw(1e-3, weight_decay=0.05)

    def losses(matmul: str) -> list[float]:
        model = vitjax.create_model(name, num_classes=10, matmul=matmul)
        params = jax.jit(vitjax.create_model(name, num_classes=10).init)(jax.random.key(0), x[:1])["params"]

        def loss_fn(p):
            out = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

        @jax.jit
        def step(p, s):
            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        state, out = (params, tx.init(params)), []
        for _ in range(3):
            *state, loss = step(*state)
            out.append(float(loss))
        return out

    np.testing.assert_allclose(losses("onednn"), losses("xla"), rtol=0, atol=1e-5)


def test_library_is_built_once_per_cache_and_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    built = kernel_build.build(tmp_path)
    assert built.parent.parent == tmp_path and built.stat().st_size > 0
    stamp = built.stat().st_mtime_ns
    assert kernel_build.build(tmp_path) == built and built.stat().st_mtime_ns == stamp  # cached, not recompiled

    monkeypatch.setenv("CXX", "/bin/false")  # a compiler that fails: another cache key, a clear error
    with pytest.raises(onednn.KernelUnavailable, match=r"compiling .*onednn_matmul\.cc failed \(/bin/false exit 1\)"):
        kernel_build.build(tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []  # no half-built directory left behind
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(onednn.KernelUnavailable, match="no-such-compiler"):
        kernel_build.build(tmp_path / "third")
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    monkeypatch.delenv("CXX")
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(onednn.KernelUnavailable, match=r"cannot build onednn_matmul\.cc in .*read-only"):
            kernel_build.build(read_only / "kernels")


def test_kernel_links_a_private_copy_of_onednn_so_paddles_can_load_beside_it(tmp_path):
    """Paddle ships its own libdnnl.so.3; one soname would make the two share a library."""
    library = kernel_build.build(tmp_path)
    needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert f"[{kernel_build.PRIVATE_SONAME}]" in needed and "[libdnnl.so.3]" not in needed
    private = subprocess.run(
        ["readelf", "-d", str(library.parent / kernel_build.PRIVATE_SONAME)], capture_output=True, text=True, check=True
    ).stdout
    assert f"Library soname: [{kernel_build.PRIVATE_SONAME}]" in private
    # both load in one process, ours first, then a library of the public soname (as `import paddle` does)
    script = (
        f"import ctypes; k = ctypes.CDLL({str(library)!r}); "
        f"p = ctypes.CDLL({str(kernel_build.onednn_paths()[1])!r}); "
        "print(k.VitjaxOnednnVersion(), p.dnnl_version is not None)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split()[1] == "True"


def test_missing_runtime_names_the_extra_to_install():
    with pytest.raises(
        onednn.KernelUnavailable, match=r"not-a-onednn-dist is not installed: pip install 'vitjax\[cpu-kernels\]'"
    ):
        kernel_build._dist_file("not-a-onednn-dist", "libdnnl.so")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto picks oneDNN on a CPU only")
def test_auto_picks_onednn_on_one_cpu_device_and_xla_on_a_mesh():
    assert resolve_matmul("auto", num_devices=1) == "onednn"
    assert resolve_matmul("auto", num_devices=8) == "xla"
    assert resolve_matmul("auto", num_devices=1, dtype="bfloat16") == "xla"  # the kernel is float32 only
    assert resolve_matmul("xla", num_devices=1) == "xla"
    with pytest.raises(ValueError, match="runs on one CPU device; this run has 8 devices"):
        resolve_matmul("onednn", num_devices=8)
    with pytest.raises(ValueError, match="model.matmul='fast': expected auto or one of"):
        resolve_matmul("fast")
    with pytest.raises(ValueError, match="matmul='fast': expected one of"):
        vitjax.create_model(MODEL, matmul="fast").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
