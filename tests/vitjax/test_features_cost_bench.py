"""``benchmarks.features_cost`` times a plain forward beside forward_intermediates (early stop,
all blocks, attention) on one set of weights, one row per variant."""

from benchmarks.features_cost import main


def test_main_prints_apply_and_every_intermediates_variant(capsys):
    main(["--models", "DeiT_test_patch8_32", "--batch", "1", "--rounds", "1"])
    rows = [line.split("|")[2].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| DeiT")]
    assert rows == [
        "apply",
        "block 1/2, stop early",
        "block 2/2, stop early",
        "all blocks",
        "all blocks + attention",
    ]
