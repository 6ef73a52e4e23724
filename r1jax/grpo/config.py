"""GRPO hyper-parameters (paper eq. 1-3) as one frozen dataclass.

The defaults follow the strong open recipes (DAPO, Dr. GRPO, Tunix DeepScaleR), not the paper's
literal per-sequence average; docs/grpo.md says why.
"""

from __future__ import annotations

import dataclasses

LOSS_AGGS = ("token_mean", "seq_mean", "dr_grpo")
ADV_SCALES = ("group", "batch", "none")
IS_CORRECTIONS = ("none", "tis_token", "tis_seq", "mis_token", "mis_seq")
RATIO_LEVELS = ("token", "sequence")


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

    ratio_level: str = "token"
    """Importance ratio of the clipped objective: "token" (GRPO, per token) or "sequence" (GSPO).
    "sequence" is GSPO (Zheng et al. 2025): s_i = exp(mean over o_i's loss tokens of (logp - old_logp)),
    clipped per sequence, every token of o_i sharing s_i; it needs loss_agg="seq_mean" (the paper's
    1/G Σ_i) and clip ranges of its own scale (the paper: eps_low=3e-4, eps_high=4e-4)."""

    is_correction: str = "none"
    """Sampler/trainer mismatch correction: "none", "tis_token", "tis_seq", "mis_token" or "mis_seq".
    Weight w on each loss token's policy-gradient term (never on the KL term), from
    ρ = π_old(trainer) / π_sampler = exp(old_logp - sampler_logp) with sampler_logp the rollout's
    logp_policy_bl (T=1, untruncated policy): "tis_*" truncated IS, w = min(ρ, is_cap); "mis_*" masked
    IS, w = 1 if 1/is_cap <= ρ <= is_cap else 0. "*_token" uses each token's ρ, "*_seq" one ρ per
    completion, exp(mean over its loss tokens of the log-ratio). Needs TrainBatch.sampler_logp_bl."""

    is_cap: float = 2.0
    """C of is_correction: the truncation cap of TIS and the band [1/C, C] of MIS (> 1)."""

    overlong_buffer: int = 0
    """DAPO soft overlong punishment: buffer L_cache in tokens (0 = off; grpo.overlong_penalty).
    A completion longer than max_len - buffer loses reward linearly, down to -overlong_penalty_factor at
    max_len (the rollout's max_new_tokens); the RL loop adds it to the rewards before advantages."""

    overlong_penalty_factor: float = 1.0
    """Scale of the soft overlong punishment: its reward at max_len is -overlong_penalty_factor."""

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
        if self.ratio_level not in RATIO_LEVELS:
            raise ValueError(f"GRPOConfig.ratio_level must be one of {RATIO_LEVELS}, got {self.ratio_level!r}")
        if self.ratio_level == "sequence" and self.loss_agg != "seq_mean":
            # GSPO's objective is a mean over sequences of one clipped term each; any other
            # aggregation would weight sequences by their length, which is not GSPO.
            raise ValueError(f"GRPOConfig.ratio_level='sequence' (GSPO) needs loss_agg='seq_mean', "
                             f"got {self.loss_agg!r}")
        if self.is_correction not in IS_CORRECTIONS:
            raise ValueError(f"GRPOConfig.is_correction must be one of {IS_CORRECTIONS}, got {self.is_correction!r}")
        if not self.is_cap > 1.0:
            raise ValueError(f"GRPOConfig.is_cap must be > 1, got {self.is_cap}")
        if self.overlong_buffer < 0:
            raise ValueError(f"GRPOConfig.overlong_buffer must be >= 0 (0 = off), got {self.overlong_buffer}")
        if self.overlong_penalty_factor < 0:
            raise ValueError(f"GRPOConfig.overlong_penalty_factor must be >= 0, got {self.overlong_penalty_factor}")
