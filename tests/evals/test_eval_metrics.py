"""pass@1 / pass@k / cons@k against brute-force definitions."""

import itertools

import numpy as np
import pytest

from r1jax.evals.metrics import cons_at_k, pass_at_1, pass_at_k


def test_pass_at_1_is_mean_fraction_correct():
    c = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert pass_at_1(c) == pytest.approx((0.5 + 0 + 1) / 3)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_pass_at_k_matches_enumeration_of_subsets(k):
    rng = np.random.default_rng(0)
    c = rng.random((6, 5)) < 0.3
    brute = []
    for row in c:
        subsets = list(itertools.combinations(range(5), k))
        brute.append(np.mean([row[list(s)].any() for s in subsets]))
    assert pass_at_k(c, k) == pytest.approx(np.mean(brute), abs=1e-12)


def test_cons_at_k_majority_vote_and_ties():
    answers = [["3", "4", "3", None], ["7", "8", "8", "7"], [None, None, None, None]]
    correct = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    # problem 0: "3" wins (correct); problem 1: tie 7/8 -> first seen "7" (wrong); problem 2: no answer.
    assert cons_at_k(answers, correct) == pytest.approx(1 / 3)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="problems, k"):
        pass_at_1(np.zeros(3))
    with pytest.raises(ValueError, match="k=4"):
        pass_at_k(np.zeros((2, 3)), 4)
