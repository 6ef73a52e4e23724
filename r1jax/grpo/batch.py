"""⑤ One GRPO batch (docs/contracts.md § GRPO) and its host-side validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class TrainBatch:
    """One GRPO batch, rows prompt-major (row = prompt_index * G + g); entry t of every *_logp_bl is
    log p(token t | tokens < t) and is zero outside the completion."""

    tokens_bl: jax.Array
    """int32 [B, L]: prompt + completion + pad, contiguous; positions are arange(L)."""
    completion_mask_bl: jax.Array
    """float32 [B, L]: 1 on completion tokens that count in the loss."""
    advantages_b: jax.Array
    """float32 [B]: eq. 3, from grpo.advantages."""
    old_logp_bl: jax.Array
    """float32 [B, L]: log-probs under π_old (the policy that sampled)."""
    ref_logp_bl: jax.Array
    """float32 [B, L]: log-probs under π_ref (ignored when β = 0; pass zeros)."""
    truncated_b: jax.Array | None = None
    """float32 [B]: 1 where the completion hit the length cap (masked when mask_truncated)."""
    sampler_logp_bl: jax.Array | None = None
    """float32 [B, L]: the sampler's own log-probs of the T=1 untruncated policy (the rollout's
    logp_policy_bl, not logp_sampling_bl) when old_logp_bl was recomputed: the mismatch metric, and the
    denominator of ρ = π_old/π_sampler for GRPOConfig.is_correction (required then)."""
    routing_btlk: jax.Array | None = None
    """int32 [B, L, L_r, K]: the experts the sampler routed every token through in each MoE layer
    (Rollout.routing_btlk); given, the training forward replays them (routing replay, R3)."""


_BL_FLOAT = ("completion_mask_bl", "old_logp_bl", "ref_logp_bl", "sampler_logp_bl")


def validate_batch(batch: TrainBatch, group_size: int | None = None, micro_batches: int = 1,
                   require_sampler_logp: bool = False) -> None:
    """Raises ValueError naming the field for wrong shapes, dtypes or non-finite values (host side,
    before the jitted step; a bad batch must never reach the compiled program).
    require_sampler_logp: sampler_logp_bl must be present (GRPOConfig.is_correction != "none")."""
    tokens = batch.tokens_bl
    if tokens is None or np.ndim(tokens) != 2:
        raise ValueError(f"TrainBatch.tokens_bl must be [B, L], got shape {np.shape(tokens)}")
    if tokens.dtype != jnp.int32:
        raise ValueError(f"TrainBatch.tokens_bl must be int32, got {tokens.dtype}")
    b, length = tokens.shape
    expected = {"advantages_b": (b,), "truncated_b": (b,), **{name: (b, length) for name in _BL_FLOAT}}
    for name, shape in expected.items():
        x = getattr(batch, name)
        if x is None:
            if name == "sampler_logp_bl" and require_sampler_logp:
                raise ValueError("TrainBatch.sampler_logp_bl is missing: GRPOConfig.is_correction needs the "
                                 "rollout's logp_policy_bl")
            if name in ("truncated_b", "sampler_logp_bl"):
                continue
            raise ValueError(f"TrainBatch.{name} is missing")
        if tuple(np.shape(x)) != shape:
            raise ValueError(f"TrainBatch.{name} must have shape {shape} (from tokens_bl), got {np.shape(x)}")
        if x.dtype != jnp.float32:
            raise ValueError(f"TrainBatch.{name} must be float32, got {x.dtype}")
        if isinstance(x, np.ndarray) and not np.isfinite(x).all():
            row = int(np.argwhere(~np.isfinite(x))[0][0])
            raise ValueError(f"TrainBatch.{name} has non-finite values (first in row {row})")
    routing = batch.routing_btlk
    if routing is not None:
        if np.ndim(routing) != 4 or tuple(np.shape(routing)[:2]) != (b, length):
            raise ValueError(f"TrainBatch.routing_btlk must be [B, L, L_r, K] with B, L = {(b, length)}, "
                             f"got shape {np.shape(routing)}")
        if routing.dtype != jnp.int32:
            raise ValueError(f"TrainBatch.routing_btlk must be int32 expert ids, got {routing.dtype}")
    if group_size is not None and b % group_size:
        raise ValueError(f"TrainBatch: batch size {b} is not a multiple of group_size {group_size}")
    if b % micro_batches:
        raise ValueError(f"TrainBatch: batch size {b} is not divisible by micro_batches {micro_batches}")


