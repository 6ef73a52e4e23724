#!/usr/bin/env bash
# Every GPU benchmark of r1jax in one call (the device tool's box: no registry access, jax/flax/torch/
# transformers preinstalled there). Results as JSON lines under ${OUT:-/tmp/r1jax_bench}; copy the numbers
# into docs/benchmarks.md with the date and the device.
#   run(command="bash benchmarks/gpu_all.sh")
set -uo pipefail
OUT=${OUT:-/tmp/r1jax_bench}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.85
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
python -c "import jax, flax, torch, transformers; print(jax.__version__, flax.__version__, torch.__version__, transformers.__version__)" | tee -a "$OUT/device.txt"
python benchmarks/bench_model.py --peer 2>&1 | tee "$OUT/model.jsonl"              # issue 2: fwd+bwd MFU
python benchmarks/bench_grpo.py --variant small_dense 2>&1 | tee "$OUT/grpo_dense.jsonl"   # issue 3 vs PyTorch step
python benchmarks/bench_grpo.py --variant small_moe --no-torch 2>&1 | tee "$OUT/grpo_moe.jsonl"
python benchmarks/bench_rollout.py 2>&1 | tee "$OUT/rollout.jsonl"                 # issue 4 vs model.generate
