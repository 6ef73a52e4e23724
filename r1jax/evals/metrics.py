"""Evaluation metrics of the R1 paper (§3): pass@1 averaged over k samples, cons@k, pass@k.

All functions take per-sample correctness laid out [n_problems, k] (row = problem), so they are
independent of how the samples were produced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def pass_at_1(correct_pk: np.ndarray) -> float:
    """Paper's pass@1: mean over problems of the fraction of the k samples that are correct."""
    correct_pk = np.asarray(correct_pk, dtype=np.float64)
    if correct_pk.ndim != 2 or correct_pk.size == 0:
        raise ValueError(f"correct_pk must be a non-empty [problems, k] array, got shape {correct_pk.shape}")
    return float(correct_pk.mean())


def pass_at_k(correct_pk: np.ndarray, k: int) -> float:
    """Unbiased pass@k from n >= k samples per problem: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    correct_pk = np.asarray(correct_pk, dtype=bool)
    n = correct_pk.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= samples per problem ({n}), got k={k}")
    out = []
    for c in correct_pk.sum(axis=1):
        if n - c < k:
            out.append(1.0)
        else:  # product form avoids huge binomials
            out.append(1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1))))
    return float(np.mean(out))


def cons_at_k(answers_pk: Sequence[Sequence[str | None]], correct_pk: np.ndarray) -> float:
    """Majority vote over the k extracted answers of each problem (None = no answer, never wins).

    The vote's correctness is that of a sample carrying the winning answer; ties go to the answer
    seen first, so the result is deterministic.
    """
    correct_pk = np.asarray(correct_pk, dtype=bool)
    hits = []
    for answers, correct in zip(answers_pk, correct_pk):
        votes = Counter(a for a in answers if a is not None and a != "")
        if not votes:
            hits.append(False)
            continue
        best = max(votes.values())
        winner = next(a for a in answers if a is not None and a != "" and votes[a] == best)
        hits.append(bool(correct[list(answers).index(winner)]))
    return float(np.mean(hits))
