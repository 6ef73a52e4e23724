"""Stage: export — a stage's checkpoint as an HF safetensors directory that transformers loads
(config.json, model.safetensors, tokenizer files, generation_config.json), written atomically."""

from __future__ import annotations

import jax
from flax import nnx

from r1jax import console
from r1jax.model.export import check_target, export_hf
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.trainer.config import ModelSpec, PolicySpec
from r1jax.trainer.policy import load_policy


def run(workdir: str, out_dir: str, step: int = -1, overwrite: bool = False) -> str:
    """Exports checkpoint `step` (-1 = the latest) of the stage workdir; returns out_dir."""
    check_target(out_dir, overwrite)  # before loading the weights
    mesh = make_mesh(MeshConfig(fsdp=-1), devices=jax.devices())
    stored = ModelSpec()  # the architecture and dtypes are the checkpoint's own
    policy = load_policy(PolicySpec(source="workdir", path=workdir, step=step), stored, mesh)
    export_hf(out_dir, policy.model_cfg, nnx.merge_state(policy.params, policy.model_state), policy.tokenizer,
              overwrite=overwrite)
    console.say("export", f"{policy.origin} -> {out_dir} (transformers: AutoModelForCausalLM.from_pretrained)")
    return out_dir
