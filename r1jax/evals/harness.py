"""Evaluation as in the R1 paper (§3): k samples per held-out problem (the paper samples at T = 0.6,
top-p 0.95; the caller's generate_fn decides), pass@1 averaged over the k samples, cons@k (majority vote
over mathematically equivalent answers) and unbiased pass@k (Chen et al. 2021). Grading is the reward
server's: an evaluation grades exactly as the training reward does.

Contract (docs/contracts.md § Evals):

    result = evaluate(generate_fn, score_fn, equivalence_fn, prompt_batches, k, pass_ks=(1,), n_show=4)

  prompt_batches   iterable of batches with `.examples`: list[dict] ("id", "question", "answer", "task"),
                   e.g. r1jax.data.PromptBatch.
  generate_fn(batch, k) -> Rollout: `.texts` list[str] and `.completion_lens_b` [B*k], rows problem-major
                   (row = problem * k + sample).
  score_fn(examples, texts) -> RewardBatch for the B*k completions (each example repeated k times); it
                   must carry components["accuracy"] (correct = accuracy >= 1) and `answers` (the final
                   answer the server extracted, None if none). components["format"] gives the format rate.
                   E.g. `lambda ex, t: client.score(items(ex, t))`.
  equivalence_fn(groups) -> classes: for each group of answers (str or None) a class id per answer, equal
                   ids = equivalent answers, -1 = no answer. E.g. `RewardClient.equivalence_classes`.

cons@k per problem: the largest class of equivalent answers wins, ties go to the class seen first, null
answers never vote; the problem is solved when the winning class's first sample is correct, and not solved
when no sample answered. Code problems have no answer to vote on (answers are null): cons@k is undefined
for them, and cons@k is averaged over the other problems only (NaN, and left out of `scalars`, when there
are none). Samples the reward service could not grade (status rejected / infra_error, valid False) count as
wrong and are reported as `invalid_frac`.

This package asks the reward server for everything it grades; it imports nothing from r1jax.reward but
the client's public classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from r1jax.evals.metrics import NO_ANSWER, majority_sample, pass_at_1, pass_at_k
from r1jax.reward.client import RewardBatch

ScoreFn = Callable[[list[dict], list[str]], RewardBatch]
EquivalenceFn = Callable[[list[list[str | None]]], list[list[int]]]
NO_VOTE_TASKS = ("code",)  # tasks whose answers are programs: nothing to vote on


@dataclasses.dataclass(frozen=True)
class ProblemRow:
    """One problem and its k samples (lists of length k, in sample order)."""

    id: str  # example["id"], or "problem-<index>" when the example has none
    question: str
    gold: str | None
    task: str
    completions: list[str]
    rewards: list[float]  # the weighted reward of each sample
    statuses: list[str]
    correct: list[bool]  # accuracy component >= 1
    answers: list[str | None]  # final answer the reward server extracted
    classes: list[int]  # equivalence class of each answer (-1 = no answer)
    lengths: list[int]  # completion tokens
    vote: int | None  # sample index cons@k picked (first of the largest class); None: no answer or no vote
    cons_correct: bool | None  # cons@k of this problem; None where it is undefined (code)

    @property
    def pass_at_1(self) -> float:
        return float(np.mean(self.correct))


@dataclasses.dataclass(frozen=True)
class EvalResult:
    k: int  # samples per problem
    pass_ks: tuple[int, ...]  # the ks of the unbiased pass@k
    rows: list[ProblemRow]
    pass_at_1: float  # mean over problems of the fraction of correct samples
    pass_at_k: dict[int, float]  # k' -> unbiased pass@k'
    cons_at_k: float  # majority vote over equivalence classes; NaN when no problem has answers to vote on
    cons_problems: int  # problems cons@k averages over (all but code problems)
    format_rate: float  # mean format reward; NaN when score_fn did not compute one
    mean_length: float  # completion tokens per sample
    invalid_frac: float  # samples the reward service could not grade (counted as wrong)
    n_show: int = 4
    other_components: dict[str, float] = dataclasses.field(default_factory=dict)
    """Mean of every other reward component score_fn returned (e.g. "language": the share of the
    reasoning in the prompt's language), over all samples; with "language", also "language_mixed": the
    fraction of samples whose reasoning is not wholly in that language (a reasoning without words counts)."""

    @property
    def n_problems(self) -> int:
        return len(self.rows)

    @property
    def samples(self) -> list[dict]:
        """The first sample of the first n_show problems, to read in a log."""
        return [{"id": r.id, "question": r.question, "gold": r.gold, "completion": r.completions[0],
                 "reward": r.rewards[0], "answer": r.answers[0]} for r in self.rows[: self.n_show]]

    def scalars(self, prefix: str = "eval/") -> dict[str, float]:
        """Finite metrics only: cons@k and format are left out when undefined (see the module docstring)."""
        out = {f"{prefix}pass@1": self.pass_at_1}
        out.update({f"{prefix}pass@{j}": v for j, v in self.pass_at_k.items() if j != 1})
        out[f"{prefix}cons@k"] = self.cons_at_k  # k is eval/k; the key is stable for plots across configs
        out[f"{prefix}format"] = self.format_rate
        out[f"{prefix}length_mean"] = self.mean_length
        out[f"{prefix}invalid_frac"] = self.invalid_frac
        out.update({f"{prefix}{name}": v for name, v in self.other_components.items()})
        out[f"{prefix}k"] = float(self.k)
        out[f"{prefix}n_problems"] = float(self.n_problems)
        return {key: v for key, v in out.items() if math.isfinite(v)}

    def protocol(self) -> dict:
        """How the numbers were computed (written next to them by write_report)."""
        return {
            "k": self.k,
            "pass_ks": list(self.pass_ks),
            "pass@1": "mean over problems of the fraction of the k samples that are correct",
            "pass@k": "unbiased estimator 1 - C(n-c, k)/C(n, k) (Chen et al. 2021), n = samples per problem",
            "cons@k": "majority vote over classes of mathematically equivalent answers (reward server "
                      "/equivalence); ties: class seen first; null answers never vote; undefined for code "
                      f"problems ({self.cons_problems} of {self.n_problems} problems counted)",
            "correct": "accuracy component of the reward server >= 1",
            "invalid": "samples the reward service could not grade count as wrong (invalid_frac)",
        }


def _check_pass_ks(pass_ks: Sequence[int], k: int) -> tuple[int, ...]:
    pass_ks = tuple(pass_ks)
    for j in pass_ks:
        if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 1 <= j <= k:
            raise ValueError(f"pass_ks: {j!r} is not an integer in [1, k={k}]; got pass_ks={pass_ks}")
    return tuple(sorted(set(int(j) for j in pass_ks)))


def _check_rollout(b: int, k: int, texts, lens: np.ndarray):
    n = b * k
    if texts is None or len(texts) != n:
        got = None if texts is None else len(texts)
        raise ValueError(f"generate_fn returned {got} texts for {b} problems x k={k} (need {n}; "
                         "Rollout.texts is None without a tokenizer)")
    if lens.shape != (n,):
        raise ValueError(f"generate_fn returned completion_lens_b of shape {lens.shape}, need ({n},)")


def _check_scored(n: int, scored: RewardBatch):
    if len(scored.rewards) != n or len(scored.status) != n:
        raise ValueError(f"score_fn returned {len(scored.rewards)} rewards for {n} completions")
    if "accuracy" not in scored.components:
        raise ValueError(f"score_fn returned no 'accuracy' component (got {sorted(scored.components)}); "
                         "an evaluation needs items weighted for accuracy")
    if scored.answers is None or len(scored.answers) != n:
        got = None if scored.answers is None else len(scored.answers)
        raise ValueError(f"score_fn returned RewardBatch.answers = {got} for {n} completions; pass the batch "
                         "RewardClient.score returns (it carries the extracted answers)")


def _check_classes(classes, groups):
    if not isinstance(classes, list) or len(classes) != len(groups):
        raise ValueError(f"equivalence_fn returned {type(classes).__name__} of length "
                         f"{len(classes) if hasattr(classes, '__len__') else '?'} for {len(groups)} groups")
    for g, (ids, group) in enumerate(zip(classes, groups)):
        if len(ids) != len(group) or not all(isinstance(c, int) and c >= NO_ANSWER for c in ids):
            raise ValueError(f"equivalence_fn group {g}: expected {len(group)} class ids >= -1, got {ids!r}")


def evaluate(
    generate_fn: Callable,
    score_fn: ScoreFn,
    equivalence_fn: EquivalenceFn,
    prompt_batches: Iterable,
    k: int,
    pass_ks: Sequence[int] = (1,),
    n_show: int = 4,
) -> EvalResult:
    """Samples k completions per problem, grades them with the reward server, votes over equivalence
    classes. See the module docstring for the contract of each callable."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    pass_ks = _check_pass_ks(pass_ks, k)
    rows: list[ProblemRow] = []
    format_sum, format_n, invalid = 0.0, 0, 0
    other_sums: dict[str, float] = {}
    for batch in prompt_batches:
        problems = list(batch.examples)
        rollout = generate_fn(batch, k)
        texts = rollout.texts
        lens = np.asarray(rollout.completion_lens_b).reshape(-1)
        _check_rollout(len(problems), k, texts, lens)
        texts = list(texts)
        examples = [ex for ex in problems for _ in range(k)]
        scored = score_fn(examples, texts)
        _check_scored(len(texts), scored)
        correct = np.asarray(scored.components["accuracy"], np.float64) >= 1.0
        if "format" in scored.components:
            format_sum += float(np.sum(np.asarray(scored.components["format"], np.float64)))
            format_n += len(texts)
        for name, values in scored.components.items():
            if name not in ("accuracy", "format"):
                other_sums[name] = other_sums.get(name, 0.0) + float(np.sum(np.asarray(values, np.float64)))
            if name == "language":  # samples whose reasoning is not wholly in the prompt's language
                other_sums["language_mixed"] = other_sums.get("language_mixed", 0.0) + float(
                    np.sum(np.asarray(values, np.float64) < 1.0))
        invalid += int(np.sum(~np.asarray(scored.valid, bool)))

        answers = [scored.answers[p * k : (p + 1) * k] for p in range(len(problems))]
        votable = [p for p, ex in enumerate(problems) if ex.get("task", "math") not in NO_VOTE_TASKS]
        votable_set = set(votable)
        groups = [answers[p] for p in votable]
        voted = equivalence_fn(groups) if groups else []
        _check_classes(voted, groups)
        classes = {p: [NO_ANSWER] * k for p in range(len(problems))}
        classes.update(zip(votable, voted))

        for p, ex in enumerate(problems):
            rows_p = slice(p * k, (p + 1) * k)
            can_vote = p in votable_set
            vote = majority_sample(classes[p]) if can_vote else None
            rows.append(ProblemRow(
                id=str(ex["id"]) if ex.get("id") is not None else f"problem-{len(rows)}",
                question=ex.get("question", ""),
                gold=ex.get("answer"),
                task=ex.get("task", "math"),
                completions=list(texts[rows_p]),
                rewards=[float(r) for r in scored.rewards[rows_p]],
                statuses=list(scored.status[rows_p]),
                correct=[bool(c) for c in correct[rows_p]],
                answers=list(answers[p]),
                classes=list(classes[p]),
                lengths=[int(n) for n in lens[rows_p]],
                vote=vote,
                cons_correct=(vote is not None and bool(correct[rows_p][vote])) if can_vote else None,
            ))
    if not rows:
        raise ValueError("prompt_batches held no problems")
    correct_pk = np.array([r.correct for r in rows], bool)
    cons = [r.cons_correct for r in rows if r.cons_correct is not None]
    return EvalResult(
        k=k,
        pass_ks=pass_ks,
        rows=rows,
        pass_at_1=pass_at_1(correct_pk),
        pass_at_k={j: pass_at_k(correct_pk, j) for j in pass_ks},
        cons_at_k=float(np.mean(cons)) if cons else float("nan"),
        cons_problems=len(cons),
        format_rate=format_sum / format_n if format_n else float("nan"),
        mean_length=float(np.mean([n for r in rows for n in r.lengths])),
        invalid_frac=invalid / (len(rows) * k),
        n_show=n_show,
        other_components={name: v / (len(rows) * k) for name, v in sorted(other_sums.items())},
    )

