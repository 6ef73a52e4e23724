"""r1jax command line: one entry, one subcommand per stage of the R1 pipeline.

  r1jax train    [--config configs/r1_zero.py:tiny] [--workdir DIR] [--config.FIELD=VALUE ...]
                 R1-Zero end to end (the alias of `rl`): with policy.source=pretrain the tiny base
                 model is pretrained first (into DIR/base), then GRPO runs on it.
  r1jax rl       the RL stage (GRPO with rule rewards) on any policy source
  r1jax pretrain the tiny base model alone
  r1jax sft      supervised fine-tuning (cold start, rejection-sampled SFT, distillation)
  r1jax sample   rejection sampling: k samples per prompt, scored, filtered -> an SFT file
  r1jax eval     the paper's evaluation protocol on a problem set -> report
  r1jax export   WORKDIR OUT_DIR [--step N]: a stage's checkpoint -> HF safetensors directory
  r1jax plot     RUN_DIR: the paper's views of a run, as PNG files

Every stage writes a workdir (default runs/<config name>) that is a policy source for the next one
(`--config.policy.source=workdir --config.policy.path=DIR`), and resumes there when started again.
Bad configs fail at start-up with one line naming the field. On a multi-host TPU pod the same
command runs on every worker (`launch/tpu_pod.sh`); jax.distributed is initialised from the
environment with --multihost.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(_REPO, "configs")
# subcommand -> (stage module, default config)
STAGES = {
    "train": ("rl", "r1_zero.py:tiny"),
    "rl": ("rl", "r1_zero.py:tiny"),
    "pretrain": ("pretrain", "r1_zero.py:tiny"),
    "sft": ("sft", "sft.py:tiny"),
    "sample": ("sample", "sample.py:tiny"),
    "eval": ("eval", "eval.py:tiny"),
}
USAGE = __doc__


def _init_distributed(flags) -> None:
    import jax

    if flags.coordinator_address:
        jax.distributed.initialize(coordinator_address=flags.coordinator_address,
                                   num_processes=flags.num_processes, process_id=flags.process_id)
    elif flags.multihost:
        jax.distributed.initialize()  # TPU pods / SLURM / Kubernetes: all from the environment


def _check_overrides(config, flag, policy) -> None:
    """A command-line override of a field that does nothing on this path is an error, not silence."""
    from ml_collections import config_flags

    from r1jax.trainer.config import ConfigError, unused_fields

    unused = unused_fields(config, policy)
    for name in config_flags.get_override_values(flag):
        for prefix, reason in unused.items():
            if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
                raise ConfigError(f"config.{name}: does nothing with {reason}")


def run_stage(command: str, config, workdir: str, check=lambda spec: None):
    """Builds the stage's spec from the config (every check before any work), then runs it; the
    R1-Zero pipeline (`train`, or `rl` with policy.source=pretrain) pretrains the base model first."""
    import importlib

    from r1jax.trainer.config import PolicySpec
    from r1jax.trainer.rewards import reward_client

    stage = importlib.import_module(f"r1jax.stages.{STAGES[command][0]}")
    spec = stage.build(config)
    check(spec)
    if command == "pretrain":
        return stage.run(spec, workdir)
    if getattr(spec, "policy", None) is not None and spec.policy.source == "pretrain":
        from r1jax.stages import pretrain

        base_spec = pretrain.build(config)  # checked before the reward server and the pretraining start
        with reward_client(spec.reward) as client:
            base = pretrain.run(base_spec, os.path.join(workdir, "base"))
            spec = dataclasses.replace(spec, policy=PolicySpec(source="workdir", path=base))
            return stage.run(spec, workdir, client)
    if getattr(spec, "reward", None) is not None:
        with reward_client(spec.reward) as client:
            return stage.run(spec, workdir, client)
    return stage.run(spec, workdir)


def _stage_main(command: str):
    def main(argv) -> None:
        import jax
        from absl import flags, logging

        from r1jax.trainer.config import ConfigError, PolicySpec

        del argv
        # orbax logs every array write at INFO; keep the run's own progress readable
        logging.get_absl_logger().addFilter(lambda record: "/orbax/" not in record.pathname)
        F = flags.FLAGS
        _init_distributed(F)
        config = F.config
        config.lock()
        workdir = F.workdir or os.path.join("runs", config.get("name", command))
        logging.info("r1jax %s: process %d/%d, %d local / %d global devices (%s)", command, jax.process_index(),
                     jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
        try:
            run_stage(command, config, workdir,
                      check=lambda spec: _check_overrides(config, F["config"], getattr(spec, "policy", None)
                                                          or PolicySpec(source="pretrain")))
        except ConfigError as e:
            print(f"r1jax {command}: {e}", file=sys.stderr)
            sys.exit(2)

    return main


def _export(argv) -> None:
    ap = argparse.ArgumentParser(prog="r1jax export", description="A stage's checkpoint -> HF safetensors dir.")
    ap.add_argument("workdir", help="a stage's workdir (policy.json, tokenizer/, checkpoints/)")
    ap.add_argument("out_dir", help="the HF directory to write (must not exist)")
    ap.add_argument("--step", type=int, default=-1, help="checkpoint step; -1 = the latest")
    args = ap.parse_args(argv)
    from r1jax.stages import export

    print(export.run(args.workdir, args.out_dir, args.step))


def run() -> None:
    argv = list(sys.argv)
    if len(argv) < 2 or argv[1] not in (*STAGES, "export", "plot"):
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
    if command == "export":
        return _export(argv[1:])

    from absl import app, flags
    from ml_collections import config_flags

    default = os.path.join(_CONFIGS, STAGES[command][1])
    config_flags.DEFINE_config_file("config", default, "ml-collections config file[:variant]")
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, plots); default runs/<name>")
    flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() from the environment (TPU pods)")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU clusters)")
    flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator_address)")
    flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator_address)")
    app.run(_stage_main(command), argv=argv)


if __name__ == "__main__":
    run()
