#!/usr/bin/env bash
# Table 6 of the R1 paper in miniature, on a CPU: a small dense student distilled from an RL-trained
# teacher vs the same student trained by GRPO from the same starting point, and the teacher.
#
#   bash benchmarks/table6_tiny.sh [RUNS_DIR]        (default runs/table6; ~1 h on a 2-core CPU)
#
# teacher          the main job: `r1jax train` (4-layer d=128 base pretrained here, then 100 GRPO steps)
# student base     a 3-layer d=96 decoder pretrained on the same corpus (same tokenizer, same recipe)
# distilled        rejection-sampled teacher outputs (correct only) -> SFT of the student base
# RL student       GRPO on the student base with the teacher's recipe
# All are evaluated by `r1jax eval` on the 64 held-out problems of the RL runs (none in any training set),
# k=16 samples each at T=0.6, top-p 0.95.
# Compute is counted as wall time of the student's own training on this machine (and the teacher's
# sampling, which distillation needs), written to summary.json with the pass@1 numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/table6}
mkdir -p "$RUNS"
STUDENT=(--config.model.overrides.d_model=96 --config.model.overrides.n_layers=3
         --config.model.overrides.mlp_dim=256)
RL_STEPS=${RL_STEPS:-150}
EVAL=(--config.data.n_eval=64 --config.eval.k=16 --config.eval.batch_prompts=8 --config.reward.workers=2)
timed() {  # timed NAME command...: runs it, appends "NAME seconds" to timings.txt
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@"
  echo "$name $(echo "$(date +%s.%N) - $t0" | bc)" >> "$RUNS/timings.txt"
}
: > "$RUNS/timings.txt"

# a finished teacher workdir (e.g. a copy of the main job's runs/r1_zero_tiny) is reused as it is
timed teacher r1jax train --workdir "$RUNS/teacher"
timed student_base r1jax pretrain --workdir "$RUNS/student_base" "${STUDENT[@]}"
timed teacher_sampling r1jax sample --config configs/sample.py:tiny --workdir "$RUNS/distill_data" \
  --config.policy.path="$RUNS/teacher" --config.data.n_train=2000 --config.sample.k=4 \
  --config.sample.max_per_prompt=2
timed distill_sft r1jax sft --config configs/sft.py:tiny --workdir "$RUNS/distilled" \
  --config.policy.path="$RUNS/student_base" --config.data.path="$RUNS/distill_data/sft_data.jsonl" \
  --config.data.template=r1_zero --config.data.seq_len=128 --config.data.batch_size=16 --config.sft.epochs=2 \
  --config.optim.learning_rate=1e-3 --config.eval.every=100 --config.rollout.max_prompt_len=64 \
  --config.rollout.max_new_tokens=48 --config.rollout.stop_strings='("</answer>",)' --config.checkpoint.every=100
timed rl_student r1jax rl --workdir "$RUNS/rl_student" --config.policy.source=workdir \
  --config.policy.path="$RUNS/student_base" "${STUDENT[@]}" --config.rl.steps="$RL_STEPS"

for name in teacher student_base distilled rl_student; do
  r1jax eval --config configs/eval.py:tiny --workdir "$RUNS/eval_$name" --config.policy.path="$RUNS/$name" \
    --config.report_name="$name" "${EVAL[@]}"
done
r1jax eval --config configs/eval.py:tiny --workdir "$RUNS/eval_teacher_base" \
  --config.policy.path="$RUNS/teacher/base" --config.report_name=teacher_base "${EVAL[@]}"

# Cold start (§2.3.1) in miniature: the teacher's correct outputs rewritten by rule into the readable
# format, SFT of the teacher's base model on them, evaluated in that format.
R1=(--config.data.template=r1 --config.rollout.max_prompt_len=160 --config.rollout.max_new_tokens=64
    --config.rollout.stop_strings='()')
timed cold_start_data r1jax sample --config configs/sample.py:cold_start --workdir "$RUNS/cold_start_data" \
  --config.policy.path="$RUNS/teacher" --config.data.n_train=1000
timed cold_start_sft r1jax sft --config configs/sft.py:tiny --workdir "$RUNS/cold_start" \
  --config.policy.path="$RUNS/teacher/base" --config.data.path="$RUNS/cold_start_data/sft_data.jsonl" \
  --config.data.seq_len=192 --config.data.batch_size=16 --config.sft.epochs=2 --config.optim.learning_rate=1e-3 \
  --config.eval.every=100 --config.checkpoint.every=100
for name in teacher/base cold_start; do
  r1jax eval --config configs/eval.py:tiny --workdir "$RUNS/eval_r1_${name//\//_}" --config.policy.path="$RUNS/$name" \
    --config.report_name="r1_${name//\//_}" "${EVAL[@]}" "${R1[@]}"
done

python - "$RUNS" <<'EOF'
import json, sys
runs = sys.argv[1]
t = dict(line.split() for line in open(f"{runs}/timings.txt"))
out = {"timings_s": {k: float(v) for k, v in t.items()}}
for name in ("teacher_base", "teacher", "student_base", "distilled", "rl_student"):
    with open(f"{runs}/eval_{name}/{name}.json") as f:
        s = json.load(f)["scalars"]
    out[name] = {k: s[k] for k in ("pass@1", "cons@k", "format", "n_problems")}
with open(f"{runs}/distill_data/stats.json") as f:
    stats = json.load(f)
out["distill_data"] = {k: stats[k] for k in ("problems", "samples", "pass@1", "written", "rejection")}
for name in ("r1_teacher_base", "r1_cold_start"):  # the readable |special_token| format
    with open(f"{runs}/eval_{name}/{name}.json") as f:
        s = json.load(f)["scalars"]
    out[name] = {k: s[k] for k in ("pass@1", "cons@k", "format", "n_problems")}
json.dump(out, open(f"{runs}/summary.json", "w"), indent=2)
print(json.dumps(out, indent=2))
EOF
