"""AdamW with linear warmup + cosine decay, global-norm clipping, and optional frozen parameters."""

from __future__ import annotations

import dataclasses
import re

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-6
    """Peak learning rate (the strong R1 reproductions use ~1e-6)."""
    warmup_steps: int = 0
    """Linear warmup from 0 to learning_rate over this many optimizer steps."""
    total_steps: int = 1000
    """Length of the cosine decay (warmup included); after it the rate stays at the end value."""
    end_lr_ratio: float = 0.1
    """Cosine floor as a fraction of learning_rate (open-r1's cosine_with_min_lr 0.1)."""
    b1: float = 0.9
    """Adam β1."""
    b2: float = 0.99
    """Adam β2 (0.99 as Tunix DeepScaleR; 0.999 is Adam's default)."""
    eps: float = 1e-8
    """Adam ε."""
    weight_decay: float = 0.01
    """Decoupled weight decay on matrices only (ndim >= 2); norms, biases and router biases are exempt."""
    clip_norm: float | None = 1.0
    """Global-norm gradient clipping over the trainable parameters; None = off."""
    frozen: tuple[str, ...] = ()
    """Regexes on parameter paths (e.g. "embed_tokens", r"layers\\.0\\."); matches get no update."""

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"OptimConfig.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"OptimConfig: need 0 <= warmup_steps <= total_steps, "
                f"got {self.warmup_steps}, {self.total_steps}"
            )
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"OptimConfig.clip_norm must be > 0 or None, got {self.clip_norm}")
        for pattern in self.frozen:
            re.compile(pattern)


def param_path(key_path) -> str:
    """'layers.0.self_attn.q_proj.kernel' from a pytree key path (Variable '.value' dropped)."""
    parts = []
    for k in key_path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        if name != "value":
            parts.append(str(name))
    return ".".join(parts)


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.total_steps,
        end_value=cfg.learning_rate * cfg.end_lr_ratio,
    )


def make_optimizer(cfg: OptimConfig, params) -> optax.GradientTransformation:
    """The optimizer for `params` (an nnx.State of Params or any pytree; used for the masks only).

    Frozen parameters go through optax.multi_transform to set_to_zero, so they also hold no Adam
    moments and do not count in the clipping norm.

    Dtypes (docs/pod.md § dtype policy): Adam's moments and the update take the parameters' dtype, so
    float32 master weights (ModelSpec.param_dtype) get float32 moments whatever the compute dtype; the
    pod fit check (launch/aot_compile.py) builds its optimizer state through this function.
    """
    decay_mask = jax.tree.map(lambda x: x.ndim >= 2, params)
    tx = optax.adamw(
        learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
        weight_decay=cfg.weight_decay, mask=decay_mask,
    )
    if cfg.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    if not cfg.frozen:
        return tx
    patterns = [re.compile(p) for p in cfg.frozen]
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if any(p.search(param_path(path)) for p in patterns) else "train", params
    )
    n_frozen = sum(label == "frozen" for label in jax.tree.leaves(labels))
    if n_frozen == 0:
        paths = [param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        hint = ("; under model.scan_layers the blocks are stacked, one path per run for all its layers "
                "(dense_layers.<...>, moe_layers.<...>), so single layers cannot be frozen"
                if any(p.startswith(("dense_layers.", "moe_layers.")) for p in paths) else "")
        raise ValueError(f"OptimConfig.frozen={cfg.frozen} matches no parameter path{hint}")
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
