"""DAPO's soft overlong punishment (eq. 13): hand values, the loop reference, and bad input."""

import numpy as np
import pytest
from grpo_reference import overlong_penalty_np

from r1jax.grpo import overlong_penalty


def test_hand_values():
    # L_max = 20, L_cache = 5: no penalty up to 15 tokens, then -1/5 per token, -1 at 20 and beyond
    got = overlong_penalty([0, 10, 15, 16, 18, 19, 20, 25], max_len=20, buffer=5)
    np.testing.assert_array_equal(got, np.float32([0, 0, 0, -0.2, -0.6, -0.8, -1.0, -1.0]))
    assert got.dtype == np.float32 and got.shape == (8,)
    half = overlong_penalty(np.array([16, 20], np.int32), max_len=20, buffer=5, factor=0.5)
    np.testing.assert_array_equal(half, np.float32([-0.1, -0.5]))
    # DAPO's own setting: L_max = 20480, L_cache = 4096 -> expected length 16384
    np.testing.assert_allclose(overlong_penalty([16384, 16385, 18432, 20480], 20480, 4096),
                               [0.0, -1 / 4096, -0.5, -1.0], rtol=1e-6)


def test_off_and_whole_range():
    assert np.all(overlong_penalty([0, 5, 20, 30], max_len=20, buffer=0) == 0)  # buffer 0 = off
    np.testing.assert_allclose(overlong_penalty([0, 5, 10, 20], max_len=20, buffer=20), [0, -0.25, -0.5, -1.0])


def test_matches_the_loop_reference():
    rng = np.random.default_rng(0)
    for max_len, buffer in [(48, 16), (512, 1), (100, 100), (4096, 1024)]:
        lengths = rng.integers(0, max_len + 10, 200)
        want = [overlong_penalty_np(n, max_len, buffer) for n in lengths]
        np.testing.assert_allclose(overlong_penalty(lengths, max_len, buffer), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("args,msg", [
    (([[1, 2]], 10, 2), "1-D"),
    (([-1, 2], 10, 2), "lengths_b must be >= 0"),
    (([1, 2], 0, 0), "max_len must be >= 1"),
    (([1, 2], 10, 11), r"buffer must be in \[0, max_len=10\]"),
    (([1, 2], 10, -1), "buffer must be in"),
])
def test_bad_input_names_the_argument(args, msg):
    with pytest.raises(ValueError, match=msg):
        overlong_penalty(*args)
    with pytest.raises(ValueError, match="factor"):
        overlong_penalty([1], 10, 2, factor=-1.0)
