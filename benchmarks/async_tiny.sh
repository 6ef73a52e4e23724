#!/usr/bin/env bash
# Asynchronous rollout with bounded staleness on the tiny R1-Zero run (CPU, 8 simulated devices).
#
#   bash benchmarks/async_tiny.sh BASE_WORKDIR [RUNS_DIR]     (~15 min on a 2-core CPU)
#
# BASE_WORKDIR: a pretrained tiny base model (e.g. runs/r1_zero_tiny/base from `r1jax train`).
# 1. Accuracy: GRPO 100 steps with max_staleness 0 and 1, seeds 0 and 1 each; held-out pass@1.
# 2. Speed: the step-time split of 30 steps, in the same session: synchronous; asynchronous on the
#    trainer's devices (the overlap is host work: reward scoring, detokenisation); asynchronous with
#    the sampler on 4 of the 8 devices (rollout and update overlap on different devices).
# Writes RUNS_DIR/summary.json and RUNS_DIR/timeline.png (one step of the 4 + 4 run).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=$1
RUNS=${2:-runs/async}
mkdir -p "$RUNS"
export XLA_FLAGS="--xla_force_host_platform_device_count=8"
COMMON=(--config.policy.source=workdir --config.policy.path="$BASE")

for seed in 0 1; do
  for s in 0 1; do
    r1jax rl --workdir "$RUNS/acc_s${s}_seed${seed}" "${COMMON[@]}" --config.seed="$seed" --config.rl.max_staleness="$s"
  done
done
SPEED=(--config.rl.steps=30 --config.eval.every=1000 --config.data.n_eval=8 --config.checkpoint.every=1000)
r1jax rl --workdir "$RUNS/speed_sync" "${COMMON[@]}" "${SPEED[@]}"
r1jax rl --workdir "$RUNS/speed_async" "${COMMON[@]}" "${SPEED[@]}" --config.rl.max_staleness=1
r1jax rl --workdir "$RUNS/speed_async_4x4" "${COMMON[@]}" "${SPEED[@]}" --config.rl.max_staleness=1 \
  --config.rl.sampler_devices=4

python - "$RUNS" <<'EOF'
import json, sys
import numpy as np
from r1jax.metrics import read_jsonl

runs = sys.argv[1]
out = {"accuracy": {}, "speed": {}}
for s in (0, 1):
    finals = []
    for seed in (0, 1):
        rows = [r for r in read_jsonl(f"{runs}/acc_s{s}_seed{seed}/metrics.jsonl") if "eval/pass@1" in r]
        finals.append(rows[-1]["eval/pass@1"])
        out["accuracy"][f"s{s}_seed{seed}"] = {"start": rows[0]["eval/pass@1"], "end": rows[-1]["eval/pass@1"]}
    out["accuracy"][f"s{s}_mean_end"] = float(np.mean(finals))
keys = ("time/step_s", "time/wait_for_rollout_s", "time/rollout_s", "time/reward_s", "time/update_s")
for name in ("speed_sync", "speed_async", "speed_async_4x4"):
    rows = [r for r in read_jsonl(f"{runs}/{name}/metrics.jsonl") if "time/step_s" in r and r["step"] > 5]
    out["speed"][name] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
json.dump(out, open(f"{runs}/summary.json", "w"), indent=2)
print(json.dumps(out, indent=2))

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = {r["step"]: r for r in read_jsonl(f"{runs}/speed_async_4x4/metrics.jsonl") if "time/step_s" in r}
step = 20
fig, ax = plt.subplots(figsize=(7, 2.2), dpi=100)
t0 = rows[step]["time/update_start"]
for y, (name, start, end, color) in enumerate([
        (f"update of step {step} (trainer devices 0-3)", rows[step]["time/update_start"],
         rows[step]["time/update_end"], "tab:blue"),
        (f"rollout for step {step + 1} (sampler devices 4-7)", rows[step + 1]["time/rollout_start"],
         rows[step + 1]["time/rollout_end"], "tab:orange")]):
    ax.barh(y, end - start, left=start - t0, color=color)
    ax.text(0, y + 0.35, name, fontsize=8)
ax.set_yticks([])
ax.set_xlabel("seconds since the update began")
ax.set_title("One step with the sampler on its own devices (max_staleness=1)")
fig.tight_layout()
fig.savefig(f"{runs}/timeline.png")
EOF
