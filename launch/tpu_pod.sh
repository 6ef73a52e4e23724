#!/usr/bin/env bash
# R1-Zero on a multi-host TPU pod slice: the same command on every worker (plain multi-controller JAX,
# jax.distributed from the TPU environment; docs/multihost.md). Each worker auto-starts its own reward
# server subprocess on localhost (config reward.urls empty) and scores its share of every batch there, so
# verification scales with the hosts and never crosses the network.
#
#   TPU_NAME=my-v5p ZONE=us-east5-a CONFIG=configs/r1_zero.py:dsv3_pod WORKDIR=gs://bucket/runs/x \
#     bash launch/tpu_pod.sh --config.data.path=gs://bucket/problems.jsonl --config.policy.path=/mnt/dsv3 ...
#
# Check the fit first, on any machine: python launch/aot_compile.py --config $CONFIG (docs/pod.md).
# Requires the repo at the same path on every worker with `pip install -e ".[gcs]"` there (gcsfs: epath's
# gs:// backend). WORKDIR must be shared storage (GCS): every worker writes its shards of each checkpoint.
# A worker that dies ends the job through jax.distributed's heartbeat (R1JAX_HEARTBEAT_S, default 100 s);
# the same command resumes from the last checkpoint.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CONFIG=${CONFIG:-configs/r1_zero.py:dsv3_pod}
WORKDIR=${WORKDIR:?set WORKDIR to shared storage, e.g. gs://bucket/runs/name}
REPO_DIR=${REPO_DIR:-r1jax}
EXTRA_ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && TPU_STDERR_LOG_LEVEL=0 r1jax train --multihost --config $CONFIG --workdir $WORKDIR$EXTRA_ARGS \
   2>&1 | tee -a /tmp/r1jax_\$(hostname).log"
