"""r1jax command line: one entry, one subcommand per stage of the R1 pipeline.

  r1jax train    R1-Zero end to end (the alias of `rl`): with policy.source=pretrain the tiny base model
                 is pretrained first (into WORKDIR/base), then GRPO runs on it
  r1jax rl       the RL stage (GRPO with rule rewards) on any policy source
  r1jax pretrain the tiny base model alone
  r1jax sft      supervised fine-tuning (cold start, rejection-sampled SFT, distillation)
  r1jax sample   rejection sampling: k samples per prompt, scored, filtered -> an SFT file
  r1jax eval     the paper's evaluation protocol on a problem set -> report
  r1jax rm       a Bradley-Terry reward model on preference pairs (helpfulness / harmlessness)
  r1jax pipeline the R1 recipe, stage after stage, each reading the previous one's output (default
                 configs/r1.py:tiny: base -> reward models -> cold start -> reasoning RL -> rejection
                 sampling -> SFT -> RL for all scenarios -> per-stage report); resumable
  r1jax config   --print [--config FILE:VARIANT] [--config.FIELD=VALUE ...]: the resolved config
  r1jax export   WORKDIR OUT_DIR [--step N] [--overwrite]: a stage's checkpoint -> HF safetensors directory
  r1jax plot     RUN_DIR: the paper's views of a run, as PNG files
  r1jax launch   -n N [--cpu_devices K | --gpus_per_process K] -- COMMAND ...: N JAX processes on this
                 machine running COMMAND together, as a pod's hosts do (r1jax/launcher.py)

Stage commands take [--config FILE:VARIANT] [--workdir DIR] [--config.FIELD=VALUE ...] [--verbose]
[--traceback]; `r1jax COMMAND --help` lists every config field with its default and meaning.
Every stage writes a workdir (default runs/<config name>) that is a policy source for the next one
(`--config.policy.source=workdir --config.policy.path=DIR`), and resumes there when started again.
A bad config fails at start-up with one line naming the field. On a multi-host TPU pod the same
command runs on every worker (`launch/tpu_pod.sh`, --multihost).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(_REPO, "configs")
# subcommand -> (the stage modules whose config it reads, default config)
STAGES = {
    "train": (("rl", "pretrain"), "r1_zero.py:tiny"),
    "rl": (("rl", "pretrain"), "r1_zero.py:tiny"),
    "pretrain": (("pretrain",), "r1_zero.py:tiny"),
    "sft": (("sft",), "sft.py:tiny"),
    "sample": (("sample",), "sample.py:tiny"),
    "eval": (("eval",), "eval.py:tiny"),
    "rm": (("rm",), "rm.py:tiny"),
}
PIPELINE_CONFIG = "r1.py:tiny"  # `r1jax pipeline`'s default: the R1 recipe on the tiny CPU model
CONFIG_FILE = "config.json"  # the resolved config, written into every run directory
TIMING_FILE = "timing.json"  # wall time and compilation counts of the command's last invocation
USAGE = __doc__


class UsageError(Exception):
    """A bad command line or config: reported in one line, no traceback."""


# ── the config of a command line ─────────────────────────────────────────────────────────────


def _join_config_value(argv: list[str]) -> list[str]:
    """`--config FILE` -> `--config=FILE`, so every config argument is one token."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            out.append(f"--config={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _config_arg(argv: list[str], command: str) -> str:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    default = PIPELINE_CONFIG if command == "pipeline" else STAGES.get(command, STAGES["train"])[1]
    return os.path.join(_CONFIGS, default)


def _parse(args: list[str], command: str, argv: list[str]):
    from absl import flags
    from ml_collections import config_flags

    saved = sys.argv
    sys.argv = ["r1jax", *args]  # ml-collections reads the overrides from sys.argv when the flag is defined
    try:
        fv = flags.FlagValues()
        config_flags.DEFINE_config_file("config", _config_arg(argv, command), "config file[:variant]",
                                        flag_values=fv)
        fv(["r1jax", *args])
    except Exception as e:  # noqa: BLE001 - flags, ml-collections and the config file raise many kinds
        raise UsageError(_one_line(e)) from None
    finally:
        sys.argv = saved
    return fv


# Sections that are open dicts: any key may be set from the command line (a ModelConfig field, a reward name).
OPEN_SECTIONS = ("model.overrides", "reward.weights", "reward_models",
                 "steps")  # a pipeline's steps: overrides of a stage's config (checked by r1jax.pipeline)


def load_config(argv: list[str], command: str):
    """The config file's config with the command line's overrides applied, and the overridden fields.
    An unknown field or a bad value is a UsageError naming it (with a did-you-mean)."""
    import ast

    from ml_collections import ConfigDict, config_flags

    from r1jax.trainer.config_docs import flatten

    overrides = [a for a in argv if a.startswith("--config.")]
    file_args = [a for a in argv if a.startswith("--config") and a not in overrides]
    base = _parse(file_args, command, argv).config
    known = list(flatten(base)) + _section_paths(base)
    open_args = {}  # keys of the open sections, set after parsing (ml-collections refuses new keys)
    for arg in overrides:
        field, _, value = arg[len("--config."):].partition("=")
        section = next((s for s in OPEN_SECTIONS if field.startswith(s + ".")), None)
        if section is not None:
            try:
                open_args[field] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                open_args[field] = value  # a bare word is a string
        elif field not in known:
            close = difflib.get_close_matches(field, known, n=1)
            raise UsageError(f"config.{field}: no such field" + (f"; did you mean config.{close[0]}?" if close else ""))
    fv = _parse(file_args + [a for a in overrides if a[len("--config."):].partition("=")[0] not in open_args],
                command, argv)
    config = fv.config
    with config.unlocked():
        for field, value in open_args.items():
            *path, key = field.split(".")
            node = config
            for name in path:
                if name not in node:  # e.g. --config.steps.rl_all.set.grpo.beta=0.04 on a step without `grpo`
                    node[name] = ConfigDict()
                node = node[name]
            node[key] = value
    return config, {**config_flags.get_override_values(fv["config"]), **open_args}


def _section_paths(c, prefix: str = "") -> list[str]:
    from ml_collections import ConfigDict

    out = []
    for key in c.keys():
        if isinstance(c[key], ConfigDict):
            out.append(prefix + key)
            out += _section_paths(c[key], prefix + key + ".")
    return out


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() adds quotes
    if "Traceback (most recent call last)" in text:  # a config file that raised: its own message is the news
        head = text.split(": ", 1)[0] if text.startswith("flag ") else ""
        text = f"{head}: {[line for line in text.splitlines() if line.strip()][-1]}".lstrip(": ")
    return " ".join(text.replace("\\n", " ").split()) or type(e).__name__


def _check_overrides(config, overrides: dict, policy) -> None:
    """A command-line override of a field that does nothing on this path is an error, not silence."""
    from r1jax.trainer.config import ConfigError, unused_fields

    unused = unused_fields(config, policy)
    for name in overrides:
        for prefix, reason in unused.items():
            if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
                raise ConfigError(f"config.{name}: does nothing with {reason}")


def _docs_of(command: str) -> tuple[dict, dict]:
    import importlib

    from r1jax.trainer.config import common_sections

    sections, docs = dict(common_sections()), {}
    for name in STAGES[command][0]:
        module = importlib.import_module(f"r1jax.stages.{name}")
        sections.update(module.CONFIG_SECTIONS)
        docs.update(module.FIELD_DOCS)
    return sections, docs


def config_help(command: str, config) -> str:
    from r1jax.trainer.config_docs import help_text

    return help_text(config, *_docs_of(command))


def config_reference() -> str:
    """docs/config.md: every field of every command's default config, generated (it cannot drift)."""
    from r1jax.trainer.config_docs import markdown_reference

    parts = ["# Config reference", "",
             "Generated by `r1jax config --reference > docs/config.md` from the shipped configs and the",
             "dataclass field docs; `r1jax COMMAND --help` prints the same for any config and overrides.", ""]
    for command in ("train", "sft", "sample", "eval", "rm"):
        default = STAGES[command][1]
        config, _ = load_config([], command)
        parts += [f"## `r1jax {command}` (`configs/{default}`)", "", markdown_reference(config, *_docs_of(command)), ""]
    return "\n".join(parts)


def resolved(config) -> str:
    """The resolved config as JSON (what `r1jax config --print` shows and every run directory keeps)."""
    return json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True) + "\n"


# ── running a stage ─────────────────────────────────────────────────────────────────────────


def run_stage(command: str, config, workdir: str, check=lambda spec: None):
    """Builds the stage's spec from the config (every check before any work), then runs it; the
    R1-Zero pipeline (`train`, or `rl` with policy.source=pretrain) pretrains the base model first."""
    import importlib

    from r1jax.trainer.config import PolicySpec
    from r1jax.trainer.rewards import reward_client

    stage = importlib.import_module(f"r1jax.stages.{STAGES[command][0][0]}")
    spec = stage.build(config)
    check(spec)
    if command == "pretrain":
        return stage.run(spec, workdir)
    if getattr(spec, "policy", None) is not None and spec.policy.source == "pretrain":
        import dataclasses

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


def _add_process_flags(ap: argparse.ArgumentParser) -> None:
    """The multi-controller flags every command that touches the devices takes (see _init_distributed)."""
    ap.add_argument("--multihost", action="store_true", help="take the processes from the cluster (TPU pods)")
    ap.add_argument("--coordinator_address", default=None)
    ap.add_argument("--num_processes", type=int, default=None)
    ap.add_argument("--process_id", type=int, default=None)


def _stage(command: str, argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog=f"r1jax {command}", add_help=False)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--verbose", "-v", action="store_true")
    ap.add_argument("--traceback", action="store_true")
    _add_process_flags(ap)
    ap.add_argument("--help", "-h", action="store_true")
    args, rest = ap.parse_known_args(_join_config_value(argv))
    stray = [a for a in rest if not a.startswith("--config")]
    try:
        if stray:
            raise UsageError(f"unknown argument {stray[0]!r}; see `r1jax {command} --help`")
        config, overrides = load_config(rest, command)
        if args.help:
            print(f"usage: r1jax {command} [--config FILE:VARIANT] [--workdir DIR] [--config.FIELD=VALUE ...] "
                  f"[--verbose] [--traceback]\n\nconfig fields ({_config_arg(rest, command)}):"
                  + config_help(command, config))
            return
        _run(command, config, overrides, args)
    except Exception as e:
        _exit_on_user_error(command, e, args.traceback)


def _exit_on_user_error(command: str, e: Exception, traceback: bool) -> None:
    """A bad command line, config, data row or path: one line and exit 2. Anything else is a bug: raised."""
    from r1jax.data.readers import DataError
    from r1jax.trainer.config import ConfigError

    user_errors = (UsageError, ConfigError, DataError, FileNotFoundError, FileExistsError, ConnectionError)
    if traceback or not isinstance(e, user_errors):
        raise e
    print(f"r1jax {command}: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


def _quiet_logs(verbose: bool) -> None:
    """The library's INFO logs (and libtpu's probe on machines without TPUs) only with --verbose."""
    from absl import flags, logging

    flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    logging.get_absl_logger().addFilter(lambda record: "/orbax/" not in record.pathname)


def _init_distributed(args) -> None:
    """Multi-controller JAX: from the flags, from `r1jax launch`'s environment, or (--multihost) from the
    cluster's own (TPU pods, SLURM, Kubernetes). CPU processes exchange collectives over gloo."""
    import jax

    from r1jax import launcher

    env = os.environ
    address = getattr(args, "coordinator_address", None) or env.get(launcher.ENV_COORDINATOR)
    if not address and not getattr(args, "multihost", False):
        return
    heartbeat = {"heartbeat_timeout_seconds": int(env[launcher.ENV_HEARTBEAT])} if launcher.ENV_HEARTBEAT in env else {}
    if env.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if not address:
        jax.distributed.initialize(**heartbeat)
        return
    n = getattr(args, "num_processes", None) or int(env[launcher.ENV_NUM_PROCESSES])
    i = getattr(args, "process_id", None)
    jax.distributed.initialize(coordinator_address=address, num_processes=n,
                               process_id=int(env[launcher.ENV_PROCESS_ID]) if i is None else i, **heartbeat)


def _run(command: str, config, overrides: dict, args) -> None:
    import time

    import jax

    from r1jax import console, fileio
    from r1jax.fileio import write_atomic, write_json
    from r1jax.trainer import compilation
    from r1jax.trainer.config import PolicySpec, compile_spec

    _quiet_logs(args.verbose)
    _init_distributed(args)
    config.lock()
    workdir = args.workdir or os.path.join("runs", config.get("name", command))
    compilation.setup(compile_spec(config))  # before the first compilation: every stage gets the cache
    before = compilation.totals()
    t0 = time.time()
    console.say(f"r1jax {command}", f"{workdir}  (config {os.path.relpath(_config_arg(sys.argv, command))})")
    console.say("devices", f"{jax.device_count()} × {jax.devices()[0].platform}, {jax.process_count()} process(es)")

    def check(spec):
        _check_overrides(config, overrides, getattr(spec, "policy", None) or PolicySpec(source="pretrain"))
        if jax.process_index() == 0:  # only a config that passed every check is recorded
            fileio.makedirs(workdir)  # workdir: a local path or a gs:// URI
            write_atomic(os.path.join(workdir, CONFIG_FILE), resolved(config))

    run_stage(command, config, workdir, check=check)
    wall_s, compiled = time.time() - t0, compilation.since(before)
    console.say("compile", compilation.summary_line(compiled))
    if jax.process_index() == 0 and fileio.isdir(workdir):
        write_json(os.path.join(workdir, TIMING_FILE), {"command": command, "wall_s": round(wall_s, 2),
                                                          "compile": compiled})
    console.say("done", f"r1jax {command} in {console.duration(wall_s)}; everything is in {workdir}")


def _config_command(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="r1jax config", description="Print the resolved config, or the reference.")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--print", action="store_true", help="print the resolved config as JSON")
    what.add_argument("--reference", action="store_true", help="print docs/config.md (every field, every command)")
    ap.add_argument("--command", default="train", choices=sorted(STAGES), help="whose default config")
    args, rest = ap.parse_known_args(_join_config_value(argv))
    if args.reference:
        sys.stdout.write(config_reference() + "\n")
        return
    try:
        config, _ = load_config(rest, args.command)
    except UsageError as e:
        print(f"r1jax config: {e}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(resolved(config))


def _export(argv) -> None:
    ap = argparse.ArgumentParser(prog="r1jax export", description="A stage's checkpoint -> HF safetensors dir.")
    ap.add_argument("workdir", help="a stage's workdir (policy.json, tokenizer/, checkpoints/)")
    ap.add_argument("out_dir", help="the HF directory to write (must not exist, unless --overwrite)")
    ap.add_argument("--step", type=int, default=-1, help="checkpoint step; -1 = the latest")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing out_dir (atomically)")
    ap.add_argument("--traceback", action="store_true", help="raise user errors with their traceback")
    _add_process_flags(ap)  # a sharded checkpoint is gathered by every process; process 0 writes
    args = ap.parse_args(argv)
    _quiet_logs(False)
    _init_distributed(args)
    from r1jax.stages import export

    try:
        print(export.run(args.workdir, args.out_dir, args.step, overwrite=args.overwrite))
    except (FileExistsError, FileNotFoundError) as e:
        _exit_on_user_error("export", e, args.traceback)


def _pipeline(argv: list[str]) -> None:
    """`r1jax pipeline [--config FILE:VARIANT] [--workdir DIR] [--config.FIELD=VALUE ...]`: the steps of a
    recipe (configs/r1.py) in order, resumable; see r1jax/pipeline.py."""
    ap = argparse.ArgumentParser(prog="r1jax pipeline", add_help=False)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--verbose", "-v", action="store_true")
    ap.add_argument("--traceback", action="store_true")
    _add_process_flags(ap)
    args, rest = ap.parse_known_args(_join_config_value(argv))
    try:
        stray = [a for a in rest if not a.startswith("--config")]
        if stray:
            raise UsageError(f"unknown argument {stray[0]!r}; see `r1jax --help`")
        config, _ = load_config(rest, "pipeline")
        _run_pipeline(config, args)
    except Exception as e:
        _exit_on_user_error("pipeline", e, args.traceback)


def _run_pipeline(config, args) -> None:
    import time

    import jax

    from r1jax import console, fileio, pipeline
    from r1jax.fileio import write_atomic, write_json
    from r1jax.trainer import compilation
    from r1jax.trainer.config import compile_spec

    _quiet_logs(args.verbose)
    _init_distributed(args)
    config.lock()
    workdir = args.workdir or os.path.join("runs", config.get("name", "pipeline"))
    compilation.setup(compile_spec(config))
    before, t0 = compilation.totals(), time.time()
    console.say("r1jax pipeline", f"{workdir}  (config {os.path.relpath(_config_arg(sys.argv, 'pipeline'))})")
    console.say("devices", f"{jax.device_count()} × {jax.devices()[0].platform}, {jax.process_count()} process(es)")
    fileio.makedirs(workdir)
    write_atomic(os.path.join(workdir, CONFIG_FILE), resolved(config))

    def run_one(command: str, stage_config, stage_workdir: str):
        def check(spec):
            if jax.process_index() == 0:
                fileio.makedirs(stage_workdir)
                write_atomic(os.path.join(stage_workdir, CONFIG_FILE), resolved(stage_config))

        t_stage, before_stage = time.time(), compilation.totals()
        out = run_stage(command, stage_config, stage_workdir, check=check)
        if jax.process_index() == 0:
            write_json(os.path.join(stage_workdir, TIMING_FILE), {
                "command": command, "wall_s": round(time.time() - t_stage, 2),
                "compile": compilation.since(before_stage)})
        return out

    pipeline.run(config, workdir, run_stage=run_one, load_config=load_config, resolved=resolved)
    wall_s, compiled = time.time() - t0, compilation.since(before)
    console.say("compile", compilation.summary_line(compiled))
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, TIMING_FILE), {"command": "pipeline", "wall_s": round(wall_s, 2),
                                                          "compile": compiled})
    console.say("done", f"r1jax pipeline in {console.duration(wall_s)}; everything is in {workdir}")


def _plot(argv) -> None:
    ap = argparse.ArgumentParser(prog="r1jax plot", description="The paper's views of a run, as PNG files.")
    ap.add_argument("run_dir")
    args = ap.parse_args(argv)
    from r1jax import fileio
    from r1jax.metrics import plot_run
    from r1jax.pipeline import STATE_FILE, plot_stages

    paths = (plot_stages(args.run_dir) if fileio.isfile(os.path.join(args.run_dir, STATE_FILE))
             else plot_run(args.run_dir))
    for path in paths:
        print(path)


def _launch(argv) -> None:
    from r1jax import launcher

    launcher.main(argv)


def run() -> None:
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command in STAGES:
        return _stage(command, rest)
    handlers = {"config": _config_command, "export": _export, "plot": _plot, "pipeline": _pipeline,
                "launch": _launch}
    if command not in handlers:
        close = difflib.get_close_matches(command, [*STAGES, *handlers], n=1)
        print(f"r1jax: unknown command {command!r}" + (f"; did you mean {close[0]!r}?" if close else "")
              + "; see `r1jax --help`", file=sys.stderr)
        sys.exit(2)
    handlers[command](rest)


if __name__ == "__main__":
    run()
