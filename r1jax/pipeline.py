"""`r1jax pipeline`: the stages of a recipe run in order, each reading the previous ones' outputs.

    r1jax pipeline --config configs/r1.py:tiny --workdir runs/r1_tiny

A pipeline config names its steps in `order`; `steps.<name>` is one step:

  command   a stage subcommand (pretrain, rm, sft, sample, rl, eval) or "data" (a data file made by
            a built-in maker, `make`: DATA_MAKERS below)
  config    the stage's config file:variant, relative to configs/ (stage commands)
  set       overrides of that stage's config, nested like it (`set.rl.steps = 60`); a string
            holding `{name}` is replaced by step `name`'s directory, so a step reads what an
            earlier step wrote (`policy.path = "{cold_start}"`)

Every step runs in WORKDIR/<name>. A finished step is recorded in WORKDIR/pipeline.json and skipped
when the same command runs again; an unfinished one is started again, and every stage resumes from
its own last checkpoint (rejection sampling at its next batch; a data step rewrites its files, each
written atomically). A step whose resolved config differs from the one it was finished with is an
error: delete its directory (and those after it) to redo it.

After the last step, the `report` section evaluates the policy of each step it names with one
evaluation (an RL stage of 0 steps: the same held-out reasoning problems, the same general prompts
scored by the same reward models; `report.step_set.<step>` adds overrides for one step, e.g. the base
model in its own R1-Zero format) and writes WORKDIR/report.md, report.json and plots/stages.png;
`r1jax plot WORKDIR` draws the plots again.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable

from ml_collections import ConfigDict

from r1jax import console, fileio
from r1jax.fileio import read_jsonl, write_json, write_jsonl
from r1jax.trainer.config import ConfigError, require

STATE_FILE = "pipeline.json"
REPORT_DIR = "report"
STAGE_COMMANDS = ("pretrain", "rm", "sft", "sample", "rl", "eval")
# Sections of a stage config whose keys are open (any name may be set): reward names, reward models,
# prompt sources, model fields.
OPEN_PATHS = ("reward.weights", "reward_models", "sources", "model.overrides")
_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# (stage command, config argv, workdir, check) -> the stage's result: r1jax.main.run_stage
RunStage = Callable[[str, ConfigDict, str], object]
LoadConfig = Callable[[list, str], tuple]


# ── data makers: small deterministic files a step can make (no model involved) ────────────────


def _preferences(params: dict, out_dir: str, seed: int) -> dict:
    from r1jax.data.general import write_preference_files

    return write_preference_files(out_dir, seed=seed, **params)


def _general_sft(params: dict, out_dir: str, seed: int) -> dict:
    from r1jax.data.general import general_sft_rows

    rows = general_sft_rows(seed=seed, **params)
    write_jsonl(os.path.join(out_dir, "general_sft.jsonl"), rows)
    return {"general_sft.jsonl": len(rows)}


def _mix(params: dict, out_dir: str, seed: int) -> dict:
    """Concatenates JSONL files (params["files"]) into mixed.jsonl, rows shuffled with the seed."""
    import numpy as np

    rows, counts = [], {}
    for path in params["files"]:
        if not fileio.isfile(path):
            raise FileNotFoundError(f"data step 'mix': {path} does not exist")
        part = read_jsonl(path)
        counts[path] = len(part)
        rows += part
    order = np.random.default_rng(seed).permutation(len(rows))
    write_jsonl(os.path.join(out_dir, "mixed.jsonl"), [rows[i] for i in order])
    return {"mixed.jsonl": len(rows), "from": counts}


def _readable_cot(params: dict, out_dir: str, seed: int) -> dict:
    """sft_data.jsonl: `n` arithmetic problems with correct narrated solutions in the readable R1 format
    (curated cold-start data, as the paper's human-written examples; the tiny recipe instead rewrites
    the base model's own correct answers, the `sample` stage with `rewrite=readable`)."""
    from r1jax.data import procedural
    from r1jax.data.base_corpus import narrate, worked_steps
    from r1jax.data.templates import format_r1_response

    rows = []
    for i in range(int(params["n"])):
        ex = procedural.generate(procedural.ProceduralConfig("arithmetic", 10**6, int(params.get("difficulty", 2)),
                                                             seed=seed + 77), i)
        steps, value = worked_steps(ex["meta"]["expression"])
        rows.append({"question": ex["question"], "answer": str(value),
                     "response": format_r1_response(narrate(steps, value), f"So the answer is \\boxed{{{value}}}.")})
    write_jsonl(os.path.join(out_dir, "sft_data.jsonl"), rows)
    return {"sft_data.jsonl": len(rows)}


DATA_MAKERS = {"preferences": _preferences, "general_sft": _general_sft, "mix": _mix, "readable_cot": _readable_cot}


# ── the steps of a config, resolved ─────────────────────────────────────────────────────────


def steps_of(c: ConfigDict) -> list[str]:
    order = list(c.order)
    require(bool(order), "order", "names no step")
    require(len(set(order)) == len(order), "order", f"names a step twice: {order}")
    for name in order:
        require(name in c.steps, "order", f"step {name!r} has no section steps.{name}")
        require(name != REPORT_DIR, "order", f"{REPORT_DIR!r} is the report's directory; rename the step")
    for name in c.steps:
        require(name in order, f"steps.{name}", f"is not in order {order}")
    return order


def _resolve(value, dirs: dict[str, str], where: str):
    """`{name}` in strings (also inside lists) -> the directory of an earlier step."""
    if isinstance(value, str):
        for ref in _REF.findall(value):
            require(ref in dirs, where, f"refers to {{{ref}}}, which is not an earlier step (earlier: {sorted(dirs)})")
        return _REF.sub(lambda m: dirs[m.group(1)], value)
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, dirs, where) for v in value)
    if isinstance(value, (dict, ConfigDict)):
        return {k: _resolve(v, dirs, f"{where}.{k}") for k, v in dict(value).items()}
    return value


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in dict(d).items():
        if isinstance(v, (dict, ConfigDict)) and not any(f"{prefix}{k}" == p for p in OPEN_PATHS):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_overrides(config: ConfigDict, overrides: dict, where: str) -> ConfigDict:
    """Sets each dotted field of `overrides` on `config`; a field the stage config does not have is an
    error naming it, except inside the open sections (OPEN_PATHS), where any key may be added."""
    with config.unlocked():
        for field, value in _flatten(overrides).items():
            *path, key = field.split(".")
            node, walked = config, []
            for name in path:
                walked.append(name)
                if name not in node and any(".".join(walked).startswith(p) or p.startswith(".".join(walked))
                                            for p in OPEN_PATHS):
                    node[name] = ConfigDict()
                require(name in node, f"{where}.{field}", f"the stage config has no section {'.'.join(walked)}")
                node = node[name]
            open_here = any(field.startswith(p + ".") or field == p for p in OPEN_PATHS)
            require(key in node or open_here, f"{where}.{field}", "the stage config has no such field")
            if isinstance(value, dict):
                value = ConfigDict(value)
            node[key] = tuple(value) if isinstance(value, list) else value
    return config


def stage_config(c: ConfigDict, name: str, dirs: dict[str, str], load_config: LoadConfig) -> ConfigDict:
    """The resolved config of stage step `name`: its config file with the step's overrides and the
    pipeline's seed."""
    step = c.steps[name]
    command = step.command
    require(command in STAGE_COMMANDS, f"steps.{name}.command",
            f"must be one of {(*STAGE_COMMANDS, 'data')}, got {command!r}")
    require(bool(step.get("config")), f"steps.{name}.config", "names the stage's config file:variant")
    config, _ = load_config([f"--config={os.path.join(_configs_dir(), step.config)}"], command)
    overrides = _resolve(step.get("set", {}), dirs, f"steps.{name}.set")
    config = apply_overrides(config, {"seed": int(c.seed), **overrides}, f"steps.{name}.set")
    config.lock()
    return config


def _configs_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# ── running ───────────────────────────────────────────────────────────────────────────────


def _state(workdir: str) -> dict:
    path = os.path.join(workdir, STATE_FILE)
    if not fileio.isfile(path):
        return {"done": {}}
    return fileio.read_json(path)


def run(c: ConfigDict, workdir: str, run_stage: RunStage, load_config: LoadConfig, resolved: Callable) -> dict:
    """Runs the steps of `c` not yet finished in `workdir`, then the report. Every config is built and
    checked before the first step starts (a typo in the last stage fails in seconds, not an hour in)."""
    order = steps_of(c)
    fileio.makedirs(workdir)
    dirs = {name: os.path.join(workdir, name) for name in order}
    configs, earlier = {}, {}
    for name in order:
        step = c.steps[name]
        if step.command == "data":
            require(step.get("make") in DATA_MAKERS, f"steps.{name}.make",
                    f"must be one of {sorted(DATA_MAKERS)}, got {step.get('make')!r}")
            configs[name] = json.dumps(_resolve(step.get("params", {}), earlier, f"steps.{name}.params"),
                                       sort_keys=True, default=list)
        else:
            configs[name] = stage_config(c, name, earlier, load_config)
        earlier[name] = dirs[name]
    state = _state(workdir)
    for name in order:
        text = configs[name] if isinstance(configs[name], str) else resolved(configs[name])
        done = state["done"].get(name)
        if done is not None:
            if done["config"] != text:
                raise ConfigError(f"config.steps.{name}: differs from the config it finished with in {dirs[name]}; "
                                  "delete that directory (and those of the steps after it) to run it again")
            console.say("pipeline", f"{name}: finished before ({done['wall_s']:.0f} s), skipped")
            continue
        console.say("pipeline", f"── step {order.index(name) + 1}/{len(order)}: {name} ({c.steps[name].command}) "
                                f"-> {dirs[name]}")
        t0 = time.time()
        fileio.makedirs(dirs[name])
        if c.steps[name].command == "data":
            made = DATA_MAKERS[c.steps[name].make](json.loads(configs[name]), dirs[name], int(c.seed))
            console.say("data", f"{name}: {made}")
        else:
            run_stage(c.steps[name].command, configs[name], dirs[name])
        state["done"][name] = {"config": text, "wall_s": round(time.time() - t0, 1), "finished": time.time()}
        write_json(os.path.join(workdir, STATE_FILE), state)
    return report(c, workdir, dirs, run_stage, load_config)


# ── the per-stage table ─────────────────────────────────────────────────────────────────────

# (metrics key of the report's evaluation, column title)
COLUMNS = (("eval/pass@1", "pass@1"), ("eval/format", "format"), ("eval/language", "language"),
           ("eval/language_mixed", "mixed CoTs"),
           ("eval/general/rm_helpful", "RM helpful"), ("eval/general/rm_harmless", "RM harmless"),
           ("eval/general/accuracy", "general exact"), ("eval/general/format", "general format"),
           ("eval/length_mean", "length"), ("eval/general/length_mean", "general length"))


def report(c: ConfigDict, workdir: str, dirs: dict, run_stage: RunStage, load_config: LoadConfig) -> dict:
    """Evaluates the policy of every step in report.steps the same way and writes the table."""
    if "report" not in c or not list(c.report.steps):
        return {}
    rows = {}
    for name in c.report.steps:
        require(name in dirs, "report.steps", f"{name!r} is not a step")
        out = os.path.join(workdir, REPORT_DIR, name)
        metrics = os.path.join(out, "metrics.jsonl")
        if not read_jsonl(metrics):  # evaluated before: kept (the policies do not change)
            config, _ = load_config([f"--config={os.path.join(_configs_dir(), c.report.config)}"], "rl")
            overrides = _resolve(c.report.get("set", {}), dirs, "report.set")
            config = apply_overrides(config, {"seed": int(c.seed), **overrides, "rl": {"steps": 0},
                                              "policy": {"source": "workdir", "path": dirs[name], "step": -1}},
                                     "report.set")
            own = c.report.get("step_set", {}).get(name, {})  # e.g. the base model in its own output format
            config = apply_overrides(config, _resolve(own, dirs, f"report.step_set.{name}"), f"report.step_set.{name}")
            config.lock()
            console.say("report", f"evaluating {name} ({dirs[name]})")
            run_stage("rl", config, out)
        first = read_jsonl(metrics)[0]
        rows[name] = {key: first[key] for key, _ in COLUMNS if key in first}
    write_json(os.path.join(workdir, "report.json"), {"stages": rows, "columns": dict(COLUMNS)})
    table = stage_table(rows)
    fileio.write_atomic(os.path.join(workdir, "report.md"), table + "\n")
    console.say("report", "\n" + table)
    console.say("plots", "\n".join(plot_stages(workdir)))
    return rows


def stage_table(rows: dict[str, dict]) -> str:
    used = [(k, title) for k, title in COLUMNS if any(k in r for r in rows.values())]
    lines = ["| stage | " + " | ".join(t for _, t in used) + " |", "|---|" + "---|" * len(used)]
    for name, r in rows.items():
        cells = [f"{r[k]:.1f}" if "length" in k and k in r else f"{r[k]:.3f}" if k in r else "—" for k, _ in used]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_stages(workdir: str) -> list[str]:
    """plots/stages.png: each report column across the stages, one panel per column."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from r1jax.metrics import save_figure

    path = os.path.join(workdir, "report.json")
    if not fileio.isfile(path):
        raise FileNotFoundError(f"{path}: the pipeline has not written its report yet")
    rows = fileio.read_json(path)["stages"]
    names = list(rows)
    used = [(k, t) for k, t in COLUMNS if any(k in r for r in rows.values())]
    fig = Figure(figsize=(3.2 * len(used), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for i, (key, title) in enumerate(used):
        ax = fig.add_subplot(1, len(used), i + 1)
        xs = [j for j, n in enumerate(names) if key in rows[n]]
        ax.plot(xs, [rows[names[j]][key] for j in xs], marker="o")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(workdir, "plots")
    fileio.makedirs(out)
    save_figure(fig, os.path.join(out, "stages.png"))
    return [os.path.join(out, "stages.png")]
