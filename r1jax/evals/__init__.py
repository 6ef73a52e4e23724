"""Evaluation protocol of the R1 paper (§3): pass@1 over k samples, cons@k over equivalent answers,
unbiased pass@k; graded by the reward server. See r1jax/evals/harness.py and docs/contracts.md § Evals."""

from r1jax.evals.harness import EvalResult, ProblemRow, evaluate
from r1jax.evals.metrics import cons_at_k, majority_sample, pass_at_1, pass_at_k
from r1jax.evals.report import write_report

__all__ = [
    "EvalResult",
    "ProblemRow",
    "cons_at_k",
    "evaluate",
    "majority_sample",
    "pass_at_1",
    "pass_at_k",
    "write_report",
]
