"""Statuses and the result record shared by the server, the workers and the client (no jax here)."""

from __future__ import annotations

import dataclasses
from typing import Any

OK = "ok"
WRONG = "wrong"
NO_ANSWER = "no_answer"
TIMEOUT = "timeout"  # CPU time or wall clock of a program, or a math check's deadline (the detail says which)
MEMORY_LIMIT = "memory_limit"  # RLIMIT_AS (MemoryError) or the run's memory cgroup cap (all its processes)
OUTPUT_LIMIT = "output_limit"  # more stdout + stderr than the cap
FILE_LIMIT = "file_limit"  # RLIMIT_FSIZE (one file) or the private tmpfs full (all files)
SIGNALED = "signal"  # killed by a signal not explained by a limit above; the detail names it (SIGSEGV, ...)
PROGRAM_REFUSED = "program_refused"  # not run: longer than the code limit, or not encodable
RUNTIME_ERROR = "runtime_error"  # raised, exited non-zero, did not compile
REJECTED = "rejected"
INFRA_ERROR = "infra_error"

# A small fixed set: counts in /metrics and the trainer's logs are keyed by these strings.
STATUSES = (
    OK, WRONG, NO_ANSWER, TIMEOUT, MEMORY_LIMIT, OUTPUT_LIMIT, FILE_LIMIT, SIGNALED, PROGRAM_REFUSED,
    RUNTIME_ERROR, REJECTED, INFRA_ERROR,
)
# Failures of the service, not of the sample: the trainer masks these instead of rewarding 0.
INFRA_STATUSES = frozenset({INFRA_ERROR, REJECTED})

TASKS = ("math", "countdown", "code", "exact", "none")
TEMPLATES = ("r1_zero", "r1", "chat", "chat_boxed")
ITEM_KEYS = frozenset({"completion", "task", "answer", "meta", "template", "weights", "id", "question"})
DEFAULT_WEIGHTS = {"accuracy": 1.0}


class ItemError(ValueError):
    """A malformed request item; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What one verifier says about one completion: a score in [0, 1] plus a status and a note."""

    score: float
    status: str
    detail: str = ""

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")


def validate_item(item: Any, index: int) -> dict:
    """Checks one request item and fills defaults ('template' has none: it is required); raises ItemError
    naming the row and field."""
    where = f"item {index}"
    if not isinstance(item, dict):
        raise ItemError(f"{where}: expected an object, got {type(item).__name__}")
    unknown = set(item) - ITEM_KEYS
    if unknown:
        raise ItemError(f"{where}: unknown field(s) {sorted(unknown)}; allowed {sorted(ITEM_KEYS)}")
    completion = item.get("completion")
    if not isinstance(completion, str):
        raise ItemError(f"{where}: field 'completion' must be a string")
    task = item.get("task", "math")
    if task not in TASKS:
        raise ItemError(f"{where}: field 'task' is {task!r}; expected one of {TASKS}")
    answer = item.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise ItemError(f"{where}: field 'answer' must be a string or null")
    meta = item.get("meta") or {}
    if not isinstance(meta, dict):
        raise ItemError(f"{where}: field 'meta' must be an object")
    if "template" not in item:  # no default: a wrong guess would silently score the format (and answers) 0
        raise ItemError(
            f"{where}: missing field 'template'; one of {TEMPLATES} (the layout the completion was "
            "generated in: 'r1_zero' = </think> <answer>...</answer>, 'r1' = |special_token| reasoning "
            "|special_token| summary, 'chat' = no structure, answer after the last </think>)"
        )
    template = item["template"]
    if template not in TEMPLATES:
        raise ItemError(f"{where}: field 'template' is {template!r}; expected one of {TEMPLATES}")
    weights = item.get("weights") or dict(DEFAULT_WEIGHTS)
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in weights.items()
    ):
        raise ItemError(f"{where}: field 'weights' must map reward names to numbers")
    if task in ("math", "exact") and answer is None and weights.get("accuracy", 0):
        raise ItemError(f"{where}: task {task!r} with an accuracy weight needs field 'answer'")
    return {
        "completion": completion,
        "task": task,
        "answer": answer,
        "meta": meta,
        "template": template,
        "weights": {k: float(v) for k, v in weights.items()},
    }
