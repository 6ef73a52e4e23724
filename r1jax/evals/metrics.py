"""Evaluation metrics of the R1 paper (§3): pass@1 averaged over k samples, cons@k, unbiased pass@k.

Pure maths on per-sample arrays laid out [n_problems, k] (row = problem), independent of how the
samples were produced or graded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

NO_ANSWER = -1  # class id of a sample without a final answer; it never votes


def _correct_array(correct_pk) -> np.ndarray:
    correct_pk = np.asarray(correct_pk)
    if correct_pk.ndim != 2 or correct_pk.size == 0:
        raise ValueError(f"correct_pk must be a non-empty [problems, k] array, got shape {correct_pk.shape}")
    return correct_pk


def pass_at_1(correct_pk: np.ndarray) -> float:
    """Paper's pass@1: mean over problems of the fraction of the k samples that are correct."""
    return float(np.mean(_correct_array(correct_pk).astype(np.float64)))


def pass_at_k_per_problem(correct_pk: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per problem from n >= k samples: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021),
    the probability that a random k-subset of the n samples holds a correct one. float64 [problems]."""
    correct_pk = _correct_array(correct_pk).astype(bool)
    n = correct_pk.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= samples per problem ({n}), got k={k}")
    out = np.empty(correct_pk.shape[0], np.float64)
    for p, c in enumerate(correct_pk.sum(axis=1)):
        if n - c < k:  # every k-subset holds a correct sample
            out[p] = 1.0
        else:  # C(n-c, k) / C(n, k) as a product: no huge binomials
            out[p] = 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))
    return out


def pass_at_k(correct_pk: np.ndarray, k: int) -> float:
    """Unbiased pass@k averaged over problems."""
    return float(np.mean(pass_at_k_per_problem(correct_pk, k)))


def majority_sample(classes_k: Sequence[int]) -> int | None:
    """The vote of one problem: the index of the first sample of the largest answer class, or None when
    no sample gave an answer. Ties go to the class seen first; NO_ANSWER (-1) never votes."""
    classes_k = [int(c) for c in classes_k]
    if any(c < NO_ANSWER for c in classes_k):
        raise ValueError(f"class ids must be >= {NO_ANSWER}, got {classes_k}")
    votes = Counter(c for c in classes_k if c != NO_ANSWER)
    if not votes:
        return None
    best = max(votes.values())
    return next(i for i, c in enumerate(classes_k) if c != NO_ANSWER and votes[c] == best)


def cons_at_k(classes_pk: Sequence[Sequence[int]], correct_pk: np.ndarray) -> float:
    """Majority vote (paper's cons@k) over answer classes (equal id = equivalent answers).

    A problem counts as solved when the first sample of the winning class is correct (for maths, members
    of one class share the verdict: the class is built with the same equivalence as the accuracy reward).
    A problem where no sample answered counts as not solved.
    """
    correct_pk = _correct_array(correct_pk).astype(bool)
    if len(classes_pk) != correct_pk.shape[0]:
        raise ValueError(f"classes_pk has {len(classes_pk)} problems, correct_pk {correct_pk.shape[0]}")
    hits = []
    for p, (classes, correct) in enumerate(zip(classes_pk, correct_pk)):
        if len(classes) != correct.shape[0]:
            raise ValueError(f"problem {p}: {len(classes)} class ids for {correct.shape[0]} samples")
        winner = majority_sample(classes)
        hits.append(winner is not None and bool(correct[winner]))
    return float(np.mean(hits))
