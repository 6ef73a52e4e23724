"""⑤ The GRPO objective: clipped ratio (eq. 1), k3 KL (eq. 2), and the named variants.

The loss is written as Σ_{b,t} w_bt · ℓ_bt: a per-token term ℓ and aggregation weights w that carry
the normaliser of the chosen variant. The weights come from the *whole* batch's mask, so gradient
accumulation over micro-batches sums to exactly the full-batch loss. Everything else a variant needs
is row-local (GSPO's sequence ratio, the sequence-level IS weight: means over one row's loss tokens),
so micro-batches of whole rows compute it exactly.

Per token t of completion i, with A_i its advantage (docs/grpo.md has each variant's source):

    ℓ_it = -w_it · min(r_it A_i, clip(r_it, 1-ε_low, 1+ε_high) A_i) + β · k3_it
    r_it = π_θ/π_old per token (ratio_level="token", GRPO), or GSPO's sequence ratio s_i
           (ratio_level="sequence"), s_i = exp((1/|o_i|) Σ_t (logp_it - old_logp_it));
    w_it = 1 (is_correction="none"), or the sampler/trainer importance weight of `is_weights`;
    k3_it = π_ref/π_θ - log(π_ref/π_θ) - 1, never multiplied by w (π_ref has nothing to do with the
            policy that sampled).
"""

from __future__ import annotations

import jax
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


def _row_mean(x_bl, keep_bl):
    """[B]: mean of x over each row's loss tokens (0 for a row without any)."""
    return jnp.sum(jnp.where(keep_bl, x_bl, 0.0), -1) / jnp.maximum(jnp.sum(keep_bl, -1), 1)


def is_weights(old_logp_bl, sampler_logp_bl, mask_bl, cfg: GRPOConfig):
    """Importance weights for the sampler/trainer mismatch (cfg.is_correction), all [B, L].

    ρ = π_old / π_sampler, both the *same* distribution — the T=1, untruncated policy — computed by
    two programs: old_logp_bl is the trainer's recomputation, sampler_logp_bl the rollout's
    `logp_policy_bl` (NOT `logp_sampling_bl`: the deliberate temperature/top-p/top-k change of the
    sampling distribution is part of the exploration, not an error to correct).

        *_token: log ρ_bt = old_logp_bt - sampler_logp_bt
        *_seq:   log ρ_b  = (1/|o_b|) Σ_t (old_logp_bt - sampler_logp_bt) over the row's loss tokens,
                 the same for every token of the row. The mean (geometric-mean ratio), not the sum:
                 E_sampler[log ρ_t] = -KL(sampler || π_old) < 0, so a sum drifts down with length and
                 would cap or mask long completions for their length alone; the mean keeps C a
                 per-token tolerance whatever the length.
        tis_*:   w = min(ρ, C)                       (truncated IS; capped where ρ > C)
        mis_*:   w = 1 if 1/C <= ρ <= C else 0       (masked IS; for *_seq the whole completion)

    w is data (neither π_old nor the sampler depends on θ) and is stop-gradiented. Returns
    {"is_weight", "is_ratio" (ρ before capping), "is_capped", "is_masked"}.
    """
    keep_bl = mask_bl > 0
    log_rho_bl = jnp.where(keep_bl, old_logp_bl - sampler_logp_bl, 0.0)
    if cfg.is_correction.endswith("_seq"):
        log_rho_bl = jnp.broadcast_to(_row_mean(log_rho_bl, keep_bl)[:, None], log_rho_bl.shape)
    rho_bl = jnp.exp(log_rho_bl)
    cap = cfg.is_cap
    if cfg.is_correction.startswith("tis_"):
        weight_bl = jnp.minimum(rho_bl, cap)
        capped_bl, masked_bl = rho_bl > cap, jnp.zeros(rho_bl.shape, bool)
    else:
        masked_bl = (rho_bl < 1.0 / cap) | (rho_bl > cap)
        weight_bl = jnp.where(masked_bl, 0.0, 1.0).astype(rho_bl.dtype)
        capped_bl = jnp.zeros(rho_bl.shape, bool)
    return {
        "is_weight": jax.lax.stop_gradient(weight_bl),
        "is_ratio": rho_bl,
        "is_capped": capped_bl.astype(jnp.float32),
        "is_masked": masked_bl.astype(jnp.float32),
    }


def per_token_terms(logp_bl, old_logp_bl, ref_logp_bl, adv_b, cfg: GRPOConfig, *, mask_bl=None,
                    is_weight_bl=None):
    """Per-token loss ℓ (to minimise) and its diagnostics, all [B, L] float32.

    ℓ = -w·min(r·A, clip(r, 1-ε_low, 1+ε_high)·A) + β·k3,  k3 = π_ref/π - log(π_ref/π) - 1 (eq. 2;
    ≥ 0, unbiased for KL(π || π_ref)); w = is_weight_bl (1 when None).
    ratio_level="token": r = π/π_old = exp(logp - old_logp) per token.
    ratio_level="sequence" (GSPO, needs mask_bl): r_t = sg[s_b] · π_t/sg[π_t], GSPO-token's form of
    s_b = exp(mean over the row's loss tokens of (logp - old_logp)): its value is s_b at every token,
    its gradient w.r.t. logp_t is s_b (times 1/|o_b| from the seq_mean weight), which is exactly the
    gradient of GSPO's sequence objective min(s_b A, clip(s_b) A) — the paper's GSPO = GSPO-token when
    all tokens share A_b.
    Dual clip: for A < 0 the objective is at least c·A, so a huge ratio cannot blow up the loss.
    """
    adv_b1 = adv_b.astype(jnp.float32)[:, None]
    extra = {}
    if cfg.ratio_level == "sequence":
        if mask_bl is None:
            raise ValueError("per_token_terms: ratio_level='sequence' (GSPO) needs mask_bl for |o_i|")
        seq_ratio_b = jnp.exp(_row_mean(logp_bl - old_logp_bl, mask_bl > 0))
        sg = jax.lax.stop_gradient
        ratio_bl = sg(seq_ratio_b)[:, None] * jnp.exp(logp_bl - sg(logp_bl))
        adv_b = adv_b.astype(jnp.float32)
        extra = {
            "seq_ratio_b": seq_ratio_b,
            "clip_low_b": ((seq_ratio_b < 1.0 - cfg.eps_low) & (adv_b < 0)).astype(jnp.float32),
            "clip_high_b": ((seq_ratio_b > 1.0 + cfg.eps_high) & (adv_b > 0)).astype(jnp.float32),
        }
    else:
        ratio_bl = jnp.exp(logp_bl - old_logp_bl)
    clipped_bl = jnp.clip(ratio_bl, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    obj_bl = jnp.minimum(ratio_bl * adv_b1, clipped_bl * adv_b1)
    if cfg.dual_clip_c is not None:
        obj_bl = jnp.where(adv_b1 < 0, jnp.maximum(obj_bl, cfg.dual_clip_c * adv_b1), obj_bl)
    if is_weight_bl is not None:
        # the IS weight multiplies the policy-gradient term only; the KL term below is against π_ref
        obj_bl = jax.lax.stop_gradient(is_weight_bl) * obj_bl
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
        **extra,
    }


def grpo_loss(logp_bl, old_logp_bl, ref_logp_bl, adv_b, mask_bl, cfg: GRPOConfig, weights_bl=None,
              sampler_logp_bl=None):
    """Scalar loss and per-token terms. weights_bl defaults to loss_weights(mask_bl); micro-batches
    pass their slice of the full batch's weights. sampler_logp_bl (the rollout's logp_policy_bl) is
    required when cfg.is_correction != "none"; the terms then carry is_weights' entries too."""
    # Inputs are zeroed outside the mask first: a masked token's garbage (inf/nan old log-probs, a nan
    # advantage of a filtered row) would otherwise reach the gradient as 0 * nan = nan.
    keep_bl = mask_bl > 0
    old_logp_bl, ref_logp_bl = (jnp.where(keep_bl, x, 0.0) for x in (old_logp_bl, ref_logp_bl))
    adv_b = jnp.where(keep_bl.any(-1), adv_b, 0.0)
    logp_safe_bl = jnp.where(keep_bl, logp_bl, 0.0)
    is_terms = {}
    if cfg.is_correction != "none":
        if sampler_logp_bl is None:
            raise ValueError(f"GRPOConfig.is_correction={cfg.is_correction!r} needs the sampler's log-probs: "
                             "TrainBatch.sampler_logp_bl = the rollout's logp_policy_bl")
        is_terms = is_weights(old_logp_bl, jnp.where(keep_bl, sampler_logp_bl, 0.0), mask_bl, cfg)
    terms = per_token_terms(logp_safe_bl, old_logp_bl, ref_logp_bl, adv_b, cfg, mask_bl=mask_bl,
                            is_weight_bl=is_terms.get("is_weight"))
    terms.update(is_terms)
    w_bl = loss_weights(mask_bl, cfg) if weights_bl is None else weights_bl
    return jnp.sum(jnp.where(keep_bl, w_bl * terms["loss"], 0.0)), terms
