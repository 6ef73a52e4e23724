"""Start-up validation of a run config: fail before any compilation, naming the field.

ml-collections already rejects unknown keys in command-line overrides (`--config.rl.stepz=3`);
this checks values and their relations to the devices.
"""

from __future__ import annotations

from ml_collections import ConfigDict


class ConfigError(ValueError):
    pass


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config.{field}: {msg}")


def check_config(c: ConfigDict, n_devices: int | None = None) -> None:
    import jax

    from r1jax.parallel.mesh import MeshConfig

    n_devices = jax.device_count() if n_devices is None else n_devices
    _require(c.grpo.group_size >= 2, "grpo.group_size",
             f"must be >= 2 (GRPO normalises rewards within a group), got {c.grpo.group_size}")
    _require(c.data.prompts_per_step >= 1, "data.prompts_per_step", f"must be >= 1, got {c.data.prompts_per_step}")
    _require(c.rl.steps >= 0, "rl.steps", f"must be >= 0, got {c.rl.steps}")
    _require(c.rollout.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
    _require(c.rollout.temperature > 0, "rollout.temperature", "must be > 0 for training rollouts")
    _require(0 < c.rollout.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {c.rollout.top_p}")
    _require(c.eval.k >= 1, "eval.k", f"must be >= 1, got {c.eval.k}")
    _require(c.checkpoint.every >= 1, "checkpoint.every", "must be >= 1")
    _require(c.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    _require(c.base.source in ("pretrain", "gguf", "hf"), "base.source",
             f"must be 'pretrain', 'gguf' or 'hf', got {c.base.source!r}")
    try:
        shape = MeshConfig(**c.mesh.to_dict()).shape(n_devices)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.mesh: {e}") from None
    batch_axes = shape[0] * shape[1] * shape[2]  # data * fsdp * expert split the batch
    rows = c.data.prompts_per_step * c.grpo.group_size
    _require(rows % batch_axes == 0, "data.prompts_per_step",
             f"prompts_per_step * grpo.group_size = {rows} rollouts must divide evenly over the "
             f"{batch_axes} batch shards of mesh {c.mesh.to_dict()}")
    _require(rows % c.grpo.micro_batches == 0 and (rows // c.grpo.micro_batches) % batch_axes == 0,
             "grpo.micro_batches",
             f"{rows} rollouts must split into {c.grpo.micro_batches} micro-batches each divisible by "
             f"{batch_axes} batch shards")
    weights = c.reward.weights.to_dict()
    _require(bool(weights) and all(w >= 0 for w in weights.values()), "reward.weights",
             f"needs at least one non-negative weight, got {weights}")
