"""④ Group-normalised advantages (paper eq. 3) and dynamic sampling.

Rows are laid out prompt-major: row = prompt_index * G + g, so a reshape to [n_groups, G] gives
the groups. Invalid samples (reward-infrastructure failures) take no part in the statistics and get
advantage 0; the trainer also removes them from the completion mask.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from r1jax.grpo.config import ADV_SCALES


def _grouped(rewards_b, group_size: int, valid_b):
    rewards_b = jnp.asarray(rewards_b, jnp.float32)
    if rewards_b.ndim != 1:
        raise ValueError(f"advantages: rewards_b must be 1-D, got shape {rewards_b.shape}")
    if group_size < 1 or rewards_b.shape[0] % group_size:
        raise ValueError(
            f"advantages: batch of {rewards_b.shape[0]} rewards is not a whole number of groups "
            f"of {group_size}"
        )
    valid_b = jnp.ones(rewards_b.shape, bool) if valid_b is None else jnp.asarray(valid_b, bool)
    if valid_b.shape != rewards_b.shape:
        raise ValueError(f"advantages: valid_b shape {valid_b.shape} != rewards_b shape {rewards_b.shape}")
    return rewards_b.reshape(-1, group_size), valid_b.reshape(-1, group_size)


def advantages(rewards_b, group_size: int, scale: str = "group", valid_b=None, eps: float = 1e-6):
    """A_i = (r_i - mean(r_group)) / std(r_group)  (eq. 3), float32 [B].

    scale: "group" (eq. 3), "batch" (std over all valid rewards of the batch, Lite PPO / TRL
    scale_rewards="batch"), "none" (mean-centred only, Dr. GRPO). std is the unbiased sample std
    (as TRL and verl compute it). A group whose valid rewards all tie gets exactly 0 — not
    (r - mean) / eps, which float rounding of the mean would turn into ±O(1) noise.
    """
    if scale not in ADV_SCALES:
        raise ValueError(f"advantages: scale must be one of {ADV_SCALES}, got {scale!r}")
    r_ng, v_ng = _grouped(rewards_b, group_size, valid_b)
    vf_ng = v_ng.astype(jnp.float32)
    n_n = vf_ng.sum(-1, keepdims=True)
    mean_n = (r_ng * vf_ng).sum(-1, keepdims=True) / jnp.maximum(n_n, 1.0)
    centred_ng = (r_ng - mean_n) * vf_ng
    big = jnp.finfo(jnp.float32).max
    r_max = jnp.where(v_ng, r_ng, -big).max(-1, keepdims=True)
    r_min = jnp.where(v_ng, r_ng, big).min(-1, keepdims=True)
    informative_n = (r_max > r_min) & (n_n >= 2)
    if scale == "group":
        std_n = jnp.sqrt((centred_ng**2).sum(-1, keepdims=True) / jnp.maximum(n_n - 1.0, 1.0))
        adv_ng = centred_ng / (std_n + eps)
    elif scale == "batch":
        n_all = vf_ng.sum()
        mean_all = (r_ng * vf_ng).sum() / jnp.maximum(n_all, 1.0)
        std_all = jnp.sqrt((((r_ng - mean_all) * vf_ng) ** 2).sum() / jnp.maximum(n_all - 1.0, 1.0))
        adv_ng = centred_ng / (std_all + eps)
    else:
        adv_ng = centred_ng
    return jnp.where(informative_n, adv_ng, 0.0).reshape(-1)


def informative_groups(rewards_b, group_size: int, valid_b=None) -> np.ndarray:
    """bool [n_groups]: True where the group's valid rewards are not all equal (>= 2 valid samples)."""
    r_ng = np.asarray(rewards_b, np.float64).reshape(-1, group_size)
    v_ng = np.ones(r_ng.shape, bool) if valid_b is None else np.asarray(valid_b, bool).reshape(r_ng.shape)
    hi = np.where(v_ng, r_ng, -np.inf).max(-1)
    lo = np.where(v_ng, r_ng, np.inf).min(-1)
    return (v_ng.sum(-1) >= 2) & (hi > lo)


def zero_variance_fraction(rewards_b, group_size: int, valid_b=None) -> float:
    """Fraction of groups that carry no signal (all valid rewards tie)."""
    return float(1.0 - informative_groups(rewards_b, group_size, valid_b).mean())


def dynamic_sampling_keep(rewards_b, group_size: int, valid_b=None) -> np.ndarray:
    """DAPO dynamic sampling, on host: bool [B] row mask keeping whole groups whose rewards differ.

    The trainer indexes its rollout arrays with it and over-samples prompts until the batch is full;
    dropped rows are never silently lost, the caller decides (and logs) what to do with them.
    """
    keep_n = informative_groups(rewards_b, group_size, valid_b)
    return np.repeat(keep_n, group_size)
