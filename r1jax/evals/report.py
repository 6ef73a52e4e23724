"""Evaluation report files: numbers with how they were computed, a table to read, every sample to grep.

    paths = write_report(result, "runs/x/eval", "step_100", settings={"temperature": 0.6, "top_p": 0.95})

  <name>.json           scalars (cons@k / format null when undefined), protocol, settings, per-problem summary
  <name>.md             markdown: metrics table, then one line per problem
  <name>_samples.jsonl  one line per sample: problem id, sample index, completion, reward, status, correct,
                        answer, class
"""

from __future__ import annotations

import json
import math
import os
import re

from r1jax import fileio
from r1jax.evals.harness import EvalResult
from r1jax.evals.metrics import pass_at_k_per_problem

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@=+-]*")
MD_CELL_CHARS = 60  # answers / golds longer than this are cut in the markdown table (the jsonl has all)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _md_cell(value, limit: int = MD_CELL_CHARS) -> str:
    text = "—" if value is None else str(value)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def summary(result: EvalResult, settings: dict | None = None) -> dict:
    """What <name>.json holds."""
    per_problem_pass = {j: pass_at_k_per_problem([r.correct for r in result.rows], j) for j in result.pass_ks}
    return {
        "scalars": {
            "pass@1": result.pass_at_1,
            **{f"pass@{j}": v for j, v in result.pass_at_k.items() if j != 1},  # pass@1 is the mean above
            "cons@k": _finite_or_none(result.cons_at_k),
            "format": _finite_or_none(result.format_rate),
            "length_mean": result.mean_length,
            "invalid_frac": result.invalid_frac,
            "n_problems": result.n_problems,
            "cons_problems": result.cons_problems,
        },
        "protocol": result.protocol(),
        "settings": dict(settings or {}),
        "problems": [
            {
                "id": r.id,
                "gold": r.gold,
                "task": r.task,
                "pass@1": r.pass_at_1,
                **{f"pass@{j}": float(per_problem_pass[j][i]) for j in result.pass_ks if j != 1},
                "cons_correct": r.cons_correct,
                "vote_answer": None if r.vote is None else r.answers[r.vote],
                "n_classes": len({c for c in r.classes if c >= 0}),
                "n_answered": sum(c >= 0 for c in r.classes),
            }
            for i, r in enumerate(result.rows)
        ],
    }


def markdown(result: EvalResult, name: str, settings: dict | None = None) -> str:
    def fmt(x) -> str:
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"

    lines = [f"# Evaluation `{name}`", "", f"{result.n_problems} problems, k = {result.k} samples each."]
    if settings:
        lines.append("Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + ".")
    cons_note = (f"over {result.cons_problems} problems with answers to vote on" if result.cons_problems
                 else "undefined: no problem has answers to vote on (code)")
    lines += ["", "| metric | value | note |", "|---|---|---|",
              f"| pass@1 | {fmt(result.pass_at_1)} | mean fraction of correct samples |"]
    lines += [f"| pass@{j} | {fmt(v)} | unbiased (Chen et al. 2021) |" for j, v in result.pass_at_k.items() if j != 1]
    lines += [f"| cons@{result.k} | {fmt(result.cons_at_k)} | majority vote over equivalent answers, {cons_note} |",
              f"| format | {fmt(result.format_rate)} | mean format reward |",
              f"| length_mean | {result.mean_length:.1f} | completion tokens |",
              f"| invalid_frac | {fmt(result.invalid_frac)} | samples the reward service could not grade |",
              "", "| problem | gold | pass@1 | vote | cons correct | classes (size) |", "|---|---|---|---|---|---|"]
    for r in result.rows:
        sizes = {}
        for c in r.classes:
            if c >= 0:
                sizes[c] = sizes.get(c, 0) + 1
        vote = "—" if r.vote is None else r.answers[r.vote]
        cons = "n/a" if r.cons_correct is None else ("yes" if r.cons_correct else "no")
        lines.append(f"| {_md_cell(r.id)} | {_md_cell(r.gold)} | {r.pass_at_1:.3f} | {_md_cell(vote)} | {cons} | "
                     f"{' '.join(f'{c}:{n}' for c, n in sizes.items()) or '—'} |")
    return "\n".join(lines) + "\n"


def sample_rows(result: EvalResult) -> list[dict]:
    return [
        {"problem_id": r.id, "sample": s, "completion": r.completions[s], "reward": r.rewards[s],
         "status": r.statuses[s], "correct": r.correct[s], "answer": r.answers[s], "class": r.classes[s],
         "length": r.lengths[s]}
        for r in result.rows
        for s in range(len(r.completions))
    ]


def write_report(result: EvalResult, out_dir: str, name: str, settings: dict | None = None) -> dict[str, str]:
    """Writes <name>.json, <name>.md and <name>_samples.jsonl under out_dir (created) -> {kind: path}.

    settings: how the samples were drawn (e.g. temperature, top_p, max_new_tokens, checkpoint step); the
    harness does not know them, so they are recorded only when given.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name {name!r} must be a plain file stem (letters, digits, . _ - @ = +; no '/')")
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"settings must be a dict or None, got {type(settings).__name__}")
    fileio.makedirs(out_dir)
    paths = {"json": os.path.join(out_dir, f"{name}.json"), "md": os.path.join(out_dir, f"{name}.md"),
             "samples": os.path.join(out_dir, f"{name}_samples.jsonl")}
    # allow_nan=False: a NaN would make the file invalid JSON; undefined values are null above
    # atomic: a reader (or a crash mid-write) never sees half a report
    fileio.write_atomic(paths["json"], json.dumps(summary(result, settings), indent=1, allow_nan=False) + "\n")
    fileio.write_atomic(paths["md"], markdown(result, name, settings))
    fileio.write_atomic(paths["samples"], "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
                                            for row in sample_rows(result)))
    return paths
