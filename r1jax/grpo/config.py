"""GRPO hyper-parameters (paper eq. 1-3) as one frozen dataclass.

The defaults follow the strong open recipes (DAPO, Dr. GRPO, Tunix DeepScaleR), not the paper's
literal per-sequence average; docs/grpo.md says why.
"""

from __future__ import annotations

import dataclasses

LOSS_AGGS = ("token_mean", "seq_mean", "dr_grpo")
ADV_SCALES = ("group", "batch", "none")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 8
    """G: completions sampled per prompt; rows prompt_index * G + g share a group."""

    loss_agg: str = "token_mean"
    """How per-token terms become one scalar.
    "token_mean": sum over all completion tokens of the batch / their count (DAPO; the default).
    "seq_mean":   mean over tokens of each completion, then mean over completions (paper, 1/G Σ 1/|o_i| Σ_t).
    "dr_grpo":    sum over all tokens / (batch size × max_completion_len), a constant (Dr. GRPO)."""

    adv_scale: str = "group"
    """Reward normalisation in eq. 3: "group" = (r - mean_G) / std_G (paper), "batch" = (r - mean_G) /
    std over the batch (Lite PPO), "none" = r - mean_G (Dr. GRPO)."""

    eps_low: float = 0.2
    """ε (lower side): the ratio is clipped below at 1 - eps_low."""

    eps_high: float = 0.28
    """ε (upper side): the ratio is clipped above at 1 + eps_high (DAPO clip-higher; eps_high = eps_low
    is the paper's symmetric clip)."""

    dual_clip_c: float | None = None
    """Dual clip c > 1 (Ye et al. 2020): for A < 0 the per-token loss is capped at -c·A. None = off."""

    beta: float = 0.0
    """β: weight of the k3 KL estimator against π_ref (eq. 2). 0 = no KL term (DAPO, Dr. GRPO)."""

    mask_truncated: bool = True
    """Drop completions cut off at the length cap from the loss (DAPO overlong filtering)."""

    max_completion_len: int | None = None
    """Constant normaliser length for "dr_grpo"; None = the batch's padded length L (constant per run)."""



    mu: int = 1
    """μ: optimizer steps per rollout batch. π_old stays the sampling policy for all μ of them."""

    adv_eps: float = 1e-6
    """Added to the std in eq. 3 (tied groups are zeroed exactly, independent of this)."""


    def __post_init__(self):
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"GRPOConfig.loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")
        if self.adv_scale not in ADV_SCALES:
            raise ValueError(f"GRPOConfig.adv_scale must be one of {ADV_SCALES}, got {self.adv_scale!r}")
        if self.group_size < 1:
            raise ValueError(f"GRPOConfig.group_size must be >= 1, got {self.group_size}")
        if not (0 <= self.eps_low < 1) or self.eps_high < 0:
            raise ValueError(
                f"GRPOConfig: need 0 <= eps_low < 1 and eps_high >= 0, got {self.eps_low}, {self.eps_high}"
            )
        if self.dual_clip_c is not None and self.dual_clip_c <= 1:
            raise ValueError(f"GRPOConfig.dual_clip_c must be > 1 (or None), got {self.dual_clip_c}")
        if self.beta < 0:
            raise ValueError(f"GRPOConfig.beta must be >= 0, got {self.beta}")
        if self.mu < 1:
            raise ValueError(f"GRPOConfig.mu must be >= 1, got {self.mu}")
        if self.max_completion_len is not None and self.max_completion_len < 1:
            raise ValueError(f"GRPOConfig.max_completion_len must be >= 1, got {self.max_completion_len}")
