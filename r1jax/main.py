"""r1jax command line.

  r1jax train [--config configs/r1_zero.py:tiny] [--workdir runs/r1_zero_tiny] [--config.rl.steps=200 ...]
  r1jax plot RUN_DIR

`train` runs the whole R1-Zero job of the config: build (or load) the base model, then the GRPO
loop with evaluations, checkpoints and plots. Started again with the same command it resumes from the
last checkpoint in the workdir. On a multi-host TPU pod the same command runs on every worker
(`launch/tpu_pod.sh`); jax.distributed is initialised from the environment.
"""

from __future__ import annotations

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(_REPO, "configs", "r1_zero.py") + ":tiny"
COMMANDS = ("train", "plot")
USAGE = __doc__


def _init_distributed(flags) -> None:
    import jax

    if flags.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=flags.coordinator_address,
            num_processes=flags.num_processes,
            process_id=flags.process_id,
        )
    elif flags.multihost:
        jax.distributed.initialize()  # TPU pods / SLURM / Kubernetes: all from the environment


def _train_main(argv) -> None:
    import jax
    from absl import flags, logging

    from r1jax import train
    from r1jax.config_check import check_config

    del argv
    # orbax logs every array write at INFO; keep the run's own progress readable
    logging.get_absl_logger().addFilter(lambda record: "/orbax/" not in record.pathname)
    F = flags.FLAGS
    _init_distributed(F)
    config = F.config
    check_config(config)
    config.lock()
    workdir = F.workdir or os.path.join("runs", config.get("name", "run"))
    logging.info("r1jax: process %d/%d, %d local / %d global devices (%s)",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].platform)
    train.run(config, workdir)


def run() -> None:
    argv = list(sys.argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(USAGE)
        sys.exit(0 if len(argv) >= 2 and argv[1] in ("-h", "--help") else 2)
    command = argv.pop(1)
    if command == "plot":
        if len(argv) != 2:
            print("usage: r1jax plot RUN_DIR", file=sys.stderr)
            sys.exit(2)
        from r1jax.metrics import plot_run

        for path in plot_run(argv[1]):
            print(path)
        return

    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "ml-collections config file[:variant]")
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, plots); default runs/<name>")
    flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() from the environment (TPU pods)")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU clusters)")
    flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator_address)")
    flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator_address)")
    app.run(_train_main, argv=argv)


if __name__ == "__main__":
    run()
