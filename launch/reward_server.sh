#!/usr/bin/env bash
# A standalone reward server (for a fleet on separate CPU hosts). Point the trainer at the fleet with
#   --config.reward.urls="http://host1:8300,http://host2:8300"
set -euo pipefail
exec r1jax-reward-server --host "${HOST:-0.0.0.0}" --port "${PORT:-8300}" --workers "${WORKERS:-$(nproc)}" "$@"
