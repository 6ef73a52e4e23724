"""Deterministic synthetic GRPO batches for tests, the resume driver and benchmarks."""

from __future__ import annotations

import numpy as np

from r1jax.grpo.advantages import advantages
from r1jax.grpo.batch import TrainBatch


def synthetic_batch(seed: int, n_prompts: int, group_size: int, length: int, vocab: int,
                    logp_noise: float = 0.3) -> TrainBatch:
    """Random prompts/completions with right padding; old/ref log-probs are random negatives in the
    completion (not a real policy's: the ratio is then far from 1, which is what the loss tests want)."""
    rng = np.random.default_rng(seed)
    b = n_prompts * group_size
    tokens = rng.integers(1, vocab, (b, length)).astype(np.int32)
    mask = np.zeros((b, length), np.float32)
    truncated = np.zeros(b, np.float32)
    for i in range(b):
        p_len = int(rng.integers(2, max(3, length // 3)))
        c_len = int(rng.integers(1, length - p_len + 1))
        mask[i, p_len:p_len + c_len] = 1.0
        tokens[i, p_len + c_len:] = 0
        truncated[i] = float(p_len + c_len == length)
    rewards = rng.integers(0, 2, b).astype(np.float32)
    rewards[:group_size] = 1.0  # one tied group
    old = np.where(mask > 0, -rng.uniform(0.5, 6.0, (b, length)), 0.0).astype(np.float32)
    ref = np.where(mask > 0, old + logp_noise * rng.normal(size=(b, length)), 0.0).astype(np.float32)
    return TrainBatch(
        tokens_bl=tokens, completion_mask_bl=mask,
        advantages_b=np.asarray(advantages(rewards, group_size), np.float32),
        old_logp_bl=old, ref_logp_bl=ref, truncated_b=truncated,
    )
