#!/usr/bin/env bash
# A tiny MoE R1-Zero run with routing replay and truncated importance sampling, beside the same run
# without them (CPU, 8 simulated devices).
#
#   bash benchmarks/moe_replay_tiny.sh [RUNS_DIR]        (~20 min on a 2-core CPU)
#
# The policy is a DeepSeek-V3-style MoE (tiny_moe: MLA, 8 routed experts + 1 shared, top-2, no MTP),
# pretrained here on the tiny corpus. The sampler computes in bfloat16 while the trainer computes in
# float32, as serving engines and trainers do, so sampler and trainer disagree on log-probs and on
# routing. Two GRPO runs from the same base, same seed:
#   plain        the trainer re-routes every token; no correction
#   replay_tis   rl.routing_replay=True (the sampler's experts replayed in π_old and the update) and
#                grpo.is_correction=tis_token (is_cap 2)
# Writes RUNS_DIR/summary.json and RUNS_DIR/moe_replay.png (held-out pass@1, router disagreement and the
# sampler/trainer log-prob gap over the steps of both runs).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/moe_replay}
mkdir -p "$RUNS"
export XLA_FLAGS="--xla_force_host_platform_device_count=8"
MOE=(--config.model.variant=tiny_moe "--config.model.overrides={}" --config.model.overrides.n_mtp=0)
r1jax pretrain --workdir "$RUNS/base" "${MOE[@]}"
RL=(--config.policy.source=workdir --config.policy.path="$RUNS/base" "${MOE[@]}" --config.rollout.compute_dtype=bfloat16)
r1jax rl --workdir "$RUNS/plain" "${RL[@]}"
r1jax rl --workdir "$RUNS/replay_tis" "${RL[@]}" --config.rl.routing_replay=True --config.grpo.is_correction=tis_token

python - "$RUNS" <<'EOF'
import json, sys
import numpy as np
from r1jax.metrics import read_jsonl

runs = sys.argv[1]
out = {}
series = {}
for name in ("plain", "replay_tis"):
    rows = read_jsonl(f"{runs}/{name}/metrics.jsonl")
    evals = [r for r in rows if "eval/pass@1" in r]
    steps = [r for r in rows if "grpo/loss" in r]
    out[name] = {
        "pass@1_start": evals[0]["eval/pass@1"], "pass@1_end": evals[-1]["eval/pass@1"],
        "format_end": evals[-1]["eval/format"],
        "router_disagreement_mean": float(np.mean([r["rollout/router_disagreement"] for r in steps])),
        "old_vs_sampler_abs_mean": float(np.mean([r["grpo/old_vs_sampler_abs"] for r in steps])),
        "expert_load_max_mean": float(np.mean([r["grpo/expert_load_max"] for r in steps])),
        "step_s_mean": float(np.mean([r["time/step_s"] for r in steps[5:]])),
    }
    series[name] = (evals, steps)
json.dump(out, open(f"{runs}/summary.json", "w"), indent=2)
print(json.dumps(out, indent=2))

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=100)
for name, (evals, steps) in series.items():
    axes[0].plot([r["step"] for r in evals], [r["eval/pass@1"] for r in evals], marker="o", label=name)
    axes[1].plot([r["step"] for r in steps], [r["rollout/router_disagreement"] for r in steps], label=name)
    axes[2].plot([r["step"] for r in steps], [r["grpo/old_vs_sampler_abs"] for r in steps], label=name)
for ax, title in zip(axes, ("held-out pass@1", "router: trainer's own choice vs sampler's",
                            "|log π_old(trainer) − log π(sampler)|")):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("RL step")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(f"{runs}/moe_replay.png")
EOF
