"""pass@1 / pass@k / cons@k against brute-force definitions."""

import itertools

import numpy as np
import pytest

from r1jax.evals.metrics import cons_at_k, majority_sample, pass_at_1, pass_at_k, pass_at_k_per_problem


def brute_pass_at_k(correct_pk: np.ndarray, k: int) -> np.ndarray:
    """Fraction of all k-subsets of each problem's samples that hold a correct one, in float64."""
    n = correct_pk.shape[1]
    subsets = list(itertools.combinations(range(n), k))
    return np.array([np.mean([row[list(s)].any() for s in subsets], dtype=np.float64) for row in correct_pk])


def test_pass_at_1_is_mean_fraction_correct():
    c = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert pass_at_1(c) == pytest.approx((0.5 + 0 + 1) / 3)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_pass_at_k_matches_enumeration_of_subsets(k):
    rng = np.random.default_rng(0)
    c = rng.random((12, 8)) < 0.3
    c[0], c[1] = True, False  # all correct, none correct
    c[2] = [True] + [False] * 7  # n - c >= k for k <= 7: the product form, not the shortcut
    brute = brute_pass_at_k(c, k)
    np.testing.assert_allclose(pass_at_k_per_problem(c, k), brute, rtol=0, atol=1e-12)
    assert pass_at_k(c, k) == pytest.approx(float(np.mean(brute)), abs=1e-12)


def test_pass_at_1_equals_unbiased_pass_at_1():
    c = np.random.default_rng(1).random((5, 7)) < 0.5
    assert pass_at_k(c, 1) == pytest.approx(pass_at_1(c), abs=1e-12)


def test_cons_at_k_votes_over_classes_with_ties_to_the_first_seen():
    classes = [[0, 1, 0, -1], [0, 1, 1, 0], [-1, -1, -1, -1], [0, 0, 1, 1]]
    correct = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    # 0: class 0 wins (correct); 1: tie 0/1 -> class 0 seen first (wrong); 2: nobody answered (wrong);
    # 3: tie -> class 0 (correct)
    assert [majority_sample(c) for c in classes] == [0, 0, None, 0]
    assert cons_at_k(classes, correct) == pytest.approx(2 / 4)


def test_no_answer_never_votes_even_as_a_majority():
    assert majority_sample([-1, -1, -1, 2, -1]) == 3
    assert cons_at_k([[-1, -1, -1, 0]], np.array([[0, 0, 0, 1]])) == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="problems, k"):
        pass_at_1(np.zeros(3))
    with pytest.raises(ValueError, match="k=4"):
        pass_at_k(np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="problem 1: 2 class ids for 3 samples"):
        cons_at_k([[0, 0, 0], [0, 1]], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="class ids must be >= -1"):
        majority_sample([0, -2])
