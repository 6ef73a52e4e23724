#!/usr/bin/env bash
# R1-Zero on a multi-host TPU pod slice: the same command on every worker (plain multi-controller JAX).
# Each worker auto-starts its own reward server subprocess on localhost (config reward.urls empty), so
# reward verification scales with the hosts and never crosses the network.
#
#   TPU_NAME=my-v5p ZONE=us-east5-a CONFIG=configs/r1_zero.py:dsv3_pod WORKDIR=gs://bucket/runs/x \
#     bash launch/tpu_pod.sh [--config.rl.steps=...]
#
# Requires the repo checked out at the same path on every worker (e.g. via `--worker=all` git clone) and
# `pip install -e .` there. WORKDIR must be shared storage (GCS) for checkpoints to be visible to all.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CONFIG=${CONFIG:-configs/r1_zero.py:dsv3_pod}
WORKDIR=${WORKDIR:?set WORKDIR to shared storage, e.g. gs://bucket/runs/name}
REPO_DIR=${REPO_DIR:-r1jax}
EXTRA_ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && TPU_STDERR_LOG_LEVEL=0 r1jax train --multihost --config $CONFIG --workdir $WORKDIR$EXTRA_ARGS \
   2>&1 | tee -a /tmp/r1jax_\$(hostname).log"
