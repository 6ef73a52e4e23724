"""⑤ The GRPO objective: clipped ratio (eq. 1), k3 KL (eq. 2), and the named variants.

The loss is written as Σ_{b,t} w_bt · ℓ_bt: a per-token term ℓ and aggregation weights w that carry
the normaliser of the chosen variant. The weights come from the *whole* batch's mask, so gradient
accumulation over micro-batches sums to exactly the full-batch loss.
"""

from __future__ import annotations

import jax.numpy as jnp

from r1jax.grpo.config import GRPOConfig


def effective_mask(completion_mask_bl, truncated_b, cfg: GRPOConfig):
    """The completion mask, minus truncated completions when cfg.mask_truncated (DAPO overlong
    filtering: a cut-off answer is neither right nor wrong, so it gets no gradient)."""
    mask_bl = completion_mask_bl.astype(jnp.float32)
    if cfg.mask_truncated and truncated_b is not None:
        mask_bl = mask_bl * (1.0 - truncated_b.astype(jnp.float32))[:, None]
    return mask_bl


def loss_weights(mask_bl, cfg: GRPOConfig):
    """w_bl such that loss = Σ w_bl ℓ_bl is the cfg.loss_agg aggregation (zero outside the mask)."""
    mask_bl = mask_bl.astype(jnp.float32)
    if cfg.loss_agg == "token_mean":
        return mask_bl / jnp.maximum(mask_bl.sum(), 1.0)
    if cfg.loss_agg == "seq_mean":
        len_b = mask_bl.sum(-1, keepdims=True)
        # Sequences with no loss tokens (masked, truncated) do not count in the 1/G average.
        n_seq = jnp.maximum((len_b > 0).sum(), 1)
        return mask_bl / jnp.maximum(len_b, 1.0) / n_seq
    norm_len = cfg.max_completion_len or mask_bl.shape[1]
    return mask_bl / (mask_bl.shape[0] * norm_len)


def per_token_terms(logp_bl, old_logp_bl, ref_logp_bl, adv_b, cfg: GRPOConfig):
    """Per-token loss ℓ (to minimise) and its diagnostics, all [B, L] float32.

    ℓ = -min(r·A, clip(r, 1-ε_low, 1+ε_high)·A) + β·k3,  r = π/π_old = exp(logp - old_logp),
    k3 = π_ref/π - log(π_ref/π) - 1  (eq. 2; ≥ 0, unbiased for KL(π || π_ref)).
    Dual clip: for A < 0 the objective is at least c·A, so a huge ratio cannot blow up the loss.
    """
    adv_b1 = adv_b.astype(jnp.float32)[:, None]
    ratio_bl = jnp.exp(logp_bl - old_logp_bl)
    clipped_bl = jnp.clip(ratio_bl, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    obj_bl = jnp.minimum(ratio_bl * adv_b1, clipped_bl * adv_b1)
    if cfg.dual_clip_c is not None:
        obj_bl = jnp.where(adv_b1 < 0, jnp.maximum(obj_bl, cfg.dual_clip_c * adv_b1), obj_bl)
    log_ref_ratio_bl = ref_logp_bl - logp_bl
    kl_bl = jnp.exp(log_ref_ratio_bl) - log_ref_ratio_bl - 1.0
    loss_bl = -obj_bl + cfg.beta * kl_bl if cfg.beta else -obj_bl
    return {
        "loss": loss_bl,
        "kl": kl_bl,
        # where clipping zeroes the gradient: below 1-ε_low with A<0, above 1+ε_high with A>0
        "clip_low": ((ratio_bl < 1.0 - cfg.eps_low) & (adv_b1 < 0)).astype(jnp.float32),
        "clip_high": ((ratio_bl > 1.0 + cfg.eps_high) & (adv_b1 > 0)).astype(jnp.float32),
        "ratio": ratio_bl,
    }


def grpo_loss(logp_bl, old_logp_bl, ref_logp_bl, adv_b, mask_bl, cfg: GRPOConfig, weights_bl=None):
    """Scalar loss and per-token terms. weights_bl defaults to loss_weights(mask_bl); micro-batches
    pass their slice of the full batch's weights."""
    # Inputs are zeroed outside the mask first: a masked token's garbage (inf/nan old log-probs, a nan
    # advantage of a filtered row) would otherwise reach the gradient as 0 * nan = nan.
    keep_bl = mask_bl > 0
    old_logp_bl, ref_logp_bl = (jnp.where(keep_bl, x, 0.0) for x in (old_logp_bl, ref_logp_bl))
    adv_b = jnp.where(keep_bl.any(-1), adv_b, 0.0)
    logp_safe_bl = jnp.where(keep_bl, logp_bl, 0.0)
    terms = per_token_terms(logp_safe_bl, old_logp_bl, ref_logp_bl, adv_b, cfg)
    w_bl = loss_weights(mask_bl, cfg) if weights_bl is None else weights_bl
    return jnp.sum(jnp.where(keep_bl, w_bl * terms["loss"], 0.0)), terms
