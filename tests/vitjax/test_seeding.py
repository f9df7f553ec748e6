"""A batch's generators are built at once, and are numpy's ``default_rng([seed, position])``."""

import numpy as np
import pytest

from vitjax.data.seeding import _PrecomputedState, pcg64_seed_words, position_generators

EDGE_POSITIONS = [0, 1, 2, 255, 256, 65535, 65536, 2**31, 2**32 - 1]


def _same_generator(ours: np.random.Generator, numpy_own: np.random.Generator) -> None:
    assert ours.bit_generator.state == numpy_own.bit_generator.state
    np.testing.assert_array_equal(ours.random(5), numpy_own.random(5))
    np.testing.assert_array_equal(ours.integers(0, 1000, 5), numpy_own.integers(0, 1000, 5))


@pytest.mark.parametrize("seed", [0, 1, 42, 2**16 + 3, 2**31, 2**32 - 1])
def test_each_generator_is_default_rng_of_seed_and_position(seed):
    rng = np.random.default_rng(seed)
    positions = EDGE_POSITIONS + [int(p) for p in rng.integers(0, 2**32, 300)]
    for position, ours in zip(positions, position_generators(seed, positions), strict=True):
        _same_generator(ours, np.random.default_rng([seed, position]))


def test_a_batch_of_consecutive_positions_matches():
    positions = list(range(10_000, 10_128))
    words = pcg64_seed_words(3, np.asarray(positions, np.uint64))
    assert words.shape == (128, 4) and words.dtype == np.uint64
    expected = np.stack([np.random.SeedSequence([3, p]).generate_state(4, np.uint64) for p in positions])
    np.testing.assert_array_equal(words, expected)


@pytest.mark.parametrize(("seed", "positions"), [(2**32, [0, 5]), (7, [3, 2**32]), (7, [2**40 + 1])])
def test_values_of_more_than_32_bits_take_numpys_own_path(seed, positions):
    for position, ours in zip(positions, position_generators(seed, positions), strict=True):
        _same_generator(ours, np.random.default_rng([seed, position]))


def test_negative_values_are_refused_as_numpy_refuses_them():
    with pytest.raises(ValueError, match="negative"):
        position_generators(-1, [0])
    with pytest.raises(ValueError, match="negative"):
        position_generators(0, [4, -2])


def test_no_positions_give_no_generators():
    assert position_generators(0, []) == [] and position_generators(0, np.array([], np.int64)) == []


def test_numpy_integers_and_arrays_are_taken_and_other_types_go_to_numpys_own_path():
    positions = np.arange(5, 12)  # an array, as a loader's positions may be
    for position, ours in zip(positions, position_generators(np.int64(9), positions), strict=True):
        _same_generator(ours, np.random.default_rng([9, int(position)]))
    _same_generator(position_generators(True, [3])[0], np.random.default_rng([True, 3]))
    with pytest.raises(TypeError):
        position_generators(1, [2.5])  # numpy refuses a float seed word, and so do we


def test_the_word_hash_refuses_values_of_more_than_32_bits():
    with pytest.raises(ValueError, match="2\\*\\*32"):
        pcg64_seed_words(1, np.array([2**32], np.uint64))


def test_the_precomputed_state_serves_only_pcg64s_request():
    state = _PrecomputedState(np.zeros(4, np.uint64))
    with pytest.raises(ValueError, match="PCG64"):
        state.generate_state(8, np.uint32)
