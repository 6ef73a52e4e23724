"""One JSON line about a finished RL run directory: wall time and compilation (timing.json), step time,
rollout throughput, reward and held-out evaluation (metrics.jsonl). benchmarks/gpu_all.sh prints it after
each GRPO run.

    python benchmarks/run_summary.py WORKDIR [--label cold]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from r1jax.metrics import METRICS_FILE, read_jsonl


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(vals) / len(vals) if vals else None


def summarize(workdir: str) -> dict:
    with open(os.path.join(workdir, "timing.json")) as f:
        timing = json.load(f)
    rows = read_jsonl(os.path.join(workdir, METRICS_FILE))
    steps = [r for r in rows if "grpo/loss" in r]
    if not steps:
        raise ValueError(f"{workdir}: no GRPO step in {METRICS_FILE}")
    evals = [r for r in rows if "eval/pass@1" in r]
    later = steps[1:] or steps  # the first step pays for compilation
    return {
        "workdir": workdir, "command": timing["command"], "wall_s": timing["wall_s"], "compile": timing["compile"],
        "steps": len(steps), "step_s_mean_after_first": _mean(later, "time/step_s"),
        "rollout_s_mean_after_first": _mean(later, "time/rollout_s"),
        "update_s_mean_after_first": _mean(later, "time/update_s"),
        "rollout_tokens_per_s": _mean(later, "throughput/rollout_tokens_per_s"),
        "reward_first": steps[0].get("reward/total"), "reward_last": steps[-1].get("reward/total"),
        "eval_steps": [r["step"] for r in evals], "eval_pass@1": [r["eval/pass@1"] for r in evals],
        "eval_format": [r.get("eval/format") for r in evals],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    out = summarize(args.workdir)
    print(json.dumps({"bench": "grpo_run", "label": args.label, **out}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
