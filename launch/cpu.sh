#!/usr/bin/env bash
# R1-Zero on a CPU laptop: the embedded tiny config (base model pretrained here, then GRPO).
# Re-running the same command resumes from the last checkpoint in the workdir.
set -euo pipefail
WORKDIR=${WORKDIR:-runs/r1_zero_tiny}
exec r1jax train --config "$(dirname "$0")/../configs/r1_zero.py:tiny" --workdir "$WORKDIR" "$@"
