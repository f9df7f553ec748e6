"""``benchmarks.studies.fused_attention`` compares three real forward passes of one model on the same weights."""

import numpy as np
from testutil import skip_module_unless_onednn_kernel_builds

skip_module_unless_onednn_kernel_builds()

from benchmarks.studies.fused_attention import VARIANTS, compile_variants, main  # noqa: E402
from vitjax.kernels import onednn  # noqa: E402


def test_variants_are_the_fused_and_unfused_attention_and_xla_on_one_set_of_weights():
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3), np.float32)
    compiled = compile_variants("DeiT_test_patch8_32", images)
    assert tuple(compiled) == VARIANTS
    programs = {v: fn.as_text() for v, (fn, _) in compiled.items()}
    assert onednn.ATTENTION_TARGET in programs["fused"]
    assert onednn.ATTENTION_TARGET not in programs["unfused"] and onednn.TARGET in programs["unfused"]
    assert onednn.TARGET not in programs["xla"] and onednn.ATTENTION_TARGET not in programs["xla"]
    logits = {v: np.asarray(fn(variables, images)) for v, (fn, variables) in compiled.items()}
    for variant in ("unfused", "xla"):
        assert np.abs(logits[variant] - logits["fused"]).max() <= 1e-4  # the fp32 parity bar
    # the switch is undone: models traced afterwards fuse their attention again
    assert onednn.ATTENTION_TARGET in compile_variants("DeiT_test_patch8_32", images)["fused"][0].as_text()


def test_main_prints_one_row_per_model_and_batch(capsys):
    main(["--models", "DeiT_test_patch8_32", "--batches", "1", "2", "--rounds", "1", "--no-pin"])
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| DeiT_test") or line.startswith("| TNT_test")
    ]
    assert [row.split("|")[1:3] for row in rows] == [
        [" DeiT_test_patch8_32 ", " 1 "],
        [" DeiT_test_patch8_32 ", " 2 "],
    ]
