"""Final answers and equivalence classes of answers, for majority voting (cons@k) in the evals.

Two halves, both without jax:
  * `final_answer(item)` and `compare_answers(answer, representative)` run inside a killable worker
    (r1jax.reward.pool): extraction and sympy may be slow on adversarial text, so they live where a
    deadline can SIGKILL them.
  * `assign_classes(groups, compare_many)` runs in the server's request thread. It never touches sympy
    itself: every comparison goes through `compare_many`, which the server backs with the worker pool.

Class assignment of one group (docs/reward.md § Final answers and equivalence classes):
  answers are taken in order; null or blank -> -1 (no answer, never votes). An answer identical to an
  earlier one after whitespace normalisation joins that answer's class without a comparison. Otherwise it
  is compared with the representative (first member) of every class so far, all in parallel, with the
  accuracy reward's rule `answers_match(answer, representative)` (the representative takes the place of
  the gold answer); it joins the first class, in class order, that matches, else opens a new class.
  So k answers need at most k*(k-1)/2 comparisons.

Deadlines: a comparison that times out (or whose worker dies) counts as "not equivalent". An answer with
such a comparison that matched nothing becomes its own class and is never compared again; a
representative with MAX_REP_FAILURES failed comparisons stops taking members by comparison. Identical
strings still join either. This bounds the time one adversarial answer can cost a group.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable

from r1jax.reward import mathcheck, textrewards
from r1jax.reward.types import INFRA_ERROR, OK

COMPARE = "compare"  # the "kind" of a pool work item that compares two answers (scoring items have none)
HEDGE = "\\HEDGE"  # mathcheck.extract_answer's marker for several different boxed answers
MAX_REP_FAILURES = 2


# ---------------------------------------------------------------- in the worker


def final_answer(item: dict) -> str | None:
    """The extracted final answer of a validated scoring item, as the accuracy reward reads it.

    math: `mathcheck.extract_answer`; a hedge (several different boxed answers) is None, since it names
    no single answer. countdown: `textrewards.countdown_answer`, the expression the countdown reward
    parses (text before a "="). code and none: None (a program is not an answer one can vote on).
    """
    completion, template = item["completion"], item["template"]
    if item["task"] == "math":
        answer, _ = mathcheck.extract_answer(completion, template)
        return None if answer == HEDGE else answer
    if item["task"] == "countdown":
        return textrewards.countdown_answer(completion, template)  # what countdown_reward grades
    return None


def safe_final_answer(item: dict) -> str | None:
    """final_answer, but an extraction bug leaves the answer null instead of failing the scored item."""
    try:
        return final_answer(item)
    except Exception:  # noqa: BLE001 - the reward verdict must survive a bug in answer reporting
        return None


def compare_answers(answer: str, representative: str) -> dict:
    """-> {"equal": bool, "status": "ok" | "infra_error", "detail": str}. Never raises."""
    try:
        equal, how = mathcheck.answers_match(answer, representative)
        return {"equal": bool(equal), "status": OK, "detail": how}
    except Exception as e:  # noqa: BLE001 - a checker bug is "not shown equal", never a crash
        return {"equal": False, "status": INFRA_ERROR,
                "detail": f"{type(e).__name__}: {e}; {traceback.format_exc()[-300:]}"}


# ---------------------------------------------------------------- in the server


class EquivalenceRequestError(ValueError):
    """A malformed /equivalence request; the message names the field (and group / answer index)."""


def validate_groups(payload, max_answers: int, max_group: int) -> list[list[str | None]]:
    if not isinstance(payload, dict):
        raise EquivalenceRequestError("body must be a JSON object with a list field 'groups'")
    unknown = set(payload) - {"groups"}
    if unknown:
        raise EquivalenceRequestError(f"unknown field(s) {sorted(unknown)}; allowed ['groups']")
    groups = payload.get("groups")
    if not isinstance(groups, list):
        raise EquivalenceRequestError("field 'groups' must be a list of lists of answer strings (or null)")
    total = 0
    for g, group in enumerate(groups):
        if not isinstance(group, list):
            raise EquivalenceRequestError(f"groups[{g}]: expected a list of answers, got {type(group).__name__}")
        if len(group) > max_group:
            raise EquivalenceRequestError(f"groups[{g}]: {len(group)} answers exceed the per-group limit {max_group}")
        for a, answer in enumerate(group):
            if answer is not None and not isinstance(answer, str):
                raise EquivalenceRequestError(
                    f"groups[{g}][{a}]: expected a string or null, got {type(answer).__name__}"
                )
        total += len(group)
    if total > max_answers:
        raise EquivalenceRequestError(f"{total} answers exceed the per-request limit {max_answers}")
    return groups


def normalise(answer: str | None) -> str | None:
    """Whitespace runs collapsed; blank -> None. Equal normalised strings are one class without sympy."""
    if answer is None:
        return None
    return " ".join(answer.split()) or None


@dataclasses.dataclass
class EquivalenceOutcome:
    classes: list[list[int]]  # per group, a class id per answer (-1 = no answer)
    comparisons: int  # comparisons sent to the workers
    failed: int  # of those, timed out or died (counted as "not equivalent")


@dataclasses.dataclass
class _Class:
    representative: str  # normalised text of the first member
    failures: int = 0  # failed comparisons against this representative
    closed: bool = False  # takes new members only as identical strings


CompareMany = Callable[[list[tuple[str, str]]], list[dict]]


def assign_classes(groups: list[list[str | None]], compare_many: CompareMany) -> EquivalenceOutcome:
    """Class ids per answer (see the module docstring). compare_many([(answer, representative), ...]) ->
    one {"equal": bool, "status": str} per pair, in order; it runs all pairs of one round at once, so
    the groups of a request proceed in parallel (round r settles answer r of every group)."""
    classes = [[-1] * len(group) for group in groups]
    per_group: list[list[_Class]] = [[] for _ in groups]
    by_text: list[dict[str, int]] = [{} for _ in groups]
    comparisons = failed = 0
    for r in range(max((len(g) for g in groups), default=0)):
        pending = []  # (group, answer text, candidate class ids)
        for g, group in enumerate(groups):
            if r >= len(group):
                continue
            text = normalise(group[r])
            if text is None:
                continue
            if text in by_text[g]:
                classes[g][r] = by_text[g][text]
                continue
            candidates = [c for c, cls in enumerate(per_group[g]) if not cls.closed]
            pending.append((g, text, candidates))
        pairs = [(text, per_group[g][c].representative) for g, text, candidates in pending for c in candidates]
        verdicts = compare_many(pairs) if pairs else []
        if len(verdicts) != len(pairs):
            raise RuntimeError(f"compare_many returned {len(verdicts)} verdicts for {len(pairs)} pairs")
        comparisons += len(pairs)
        at = 0
        for g, text, candidates in pending:
            mine, at = verdicts[at : at + len(candidates)], at + len(candidates)
            joined, any_failed = None, False
            for c, verdict in zip(candidates, mine):
                if verdict.get("status") != OK:
                    any_failed = True
                    failed += 1
                    per_group[g][c].failures += 1
                    per_group[g][c].closed = per_group[g][c].failures >= MAX_REP_FAILURES
                elif verdict.get("equal") and joined is None:
                    joined = c
            if joined is None:
                joined = len(per_group[g])
                per_group[g].append(_Class(text, closed=any_failed))
            classes[g][r] = joined
            by_text[g][text] = joined
    return EquivalenceOutcome(classes, comparisons, failed)
