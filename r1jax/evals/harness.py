"""Evaluation as in the paper (§3): k samples per held-out problem at T = 0.6, top-p 0.95;
pass@1 averaged over the k samples and cons@k (majority vote). Reuses the rollout engine and the
reward server, so an evaluation grades exactly as training rewards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from r1jax.evals.metrics import cons_at_k, pass_at_1


def _normalise(answer: str | None) -> str | None:
    return None if answer is None else " ".join(answer.split()) or None


@dataclasses.dataclass(frozen=True)
class EvalResult:
    pass_at_1: float
    cons_at_k: float
    format_rate: float
    k: int
    n_problems: int
    mean_length: float
    samples: list[dict]  # a few (question, completion, reward) rows to read

    def scalars(self, prefix: str = "eval/") -> dict[str, float]:
        return {f"{prefix}pass@1": self.pass_at_1, f"{prefix}cons@k": self.cons_at_k,
                f"{prefix}format": self.format_rate, f"{prefix}length_mean": self.mean_length}


def evaluate(
    generate_fn: Callable,
    score_fn: Callable,
    prompt_batches: Sequence,
    k: int,
    extract_fn: Callable[[str], str | None],
    n_show: int = 4,
) -> EvalResult:
    """generate_fn(prompt_batch, n=k) -> Rollout (rows problem-major); score_fn(examples, texts) ->
    RewardBatch for the k completions of each example (examples repeated k times); extract_fn(text)
    -> the final answer string or None, the vote of cons@k."""
    correct, answers, formats, lengths, shown = [], [], [], [], []
    for batch in prompt_batches:
        rollout = generate_fn(batch, k)
        examples = [ex for ex in batch.examples for _ in range(k)]
        result = score_fn(examples, rollout.texts)
        acc = result.components.get("accuracy", result.rewards)
        correct.append(np.asarray(acc, np.float64).reshape(-1, k) >= 1.0)
        fmt = result.components.get("format")
        if fmt is not None:
            formats.append(np.asarray(fmt, np.float64))
        lengths.append(np.asarray(rollout.completion_lens_b, np.float64))
        extracted = [_normalise(extract_fn(t)) for t in rollout.texts]
        answers += [extracted[i : i + k] for i in range(0, len(extracted), k)]
        for i in range(0, len(examples), k):
            if len(shown) < n_show:
                shown.append({"question": examples[i]["question"], "gold": examples[i].get("answer"),
                              "completion": rollout.texts[i], "reward": float(result.rewards[i])})
    correct_pk = np.concatenate(correct)
    return EvalResult(
        pass_at_1=pass_at_1(correct_pk),
        cons_at_k=cons_at_k(answers, correct_pk),
        format_rate=float(np.mean(np.concatenate(formats))) if formats else float("nan"),
        k=k,
        n_problems=correct_pk.shape[0],
        mean_length=float(np.mean(np.concatenate(lengths))),
        samples=shown,
    )
