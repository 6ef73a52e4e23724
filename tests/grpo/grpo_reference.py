"""Independent float64 NumPy implementations of GRPO eqs. 1-3 and the variants (test oracle).

Written from the formulas with loops over groups and sequences, not from r1jax/grpo's code.
"""

from __future__ import annotations

import numpy as np


def advantages_np(rewards, group_size, scale="group", valid=None, eps=1e-6):
    r = np.asarray(rewards, np.float64)
    valid = np.ones(len(r), bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros(len(r))
    vr_all = r[valid]
    batch_std = vr_all.std(ddof=1) if len(vr_all) > 1 else 0.0
    for g0 in range(0, len(r), group_size):
        idx = [i for i in range(g0, g0 + group_size) if valid[i]]
        vals = r[idx]
        if len(idx) < 2 or vals.max() == vals.min():
            continue
        mean = vals.mean()
        if scale == "group":
            denom = vals.std(ddof=1) + eps
        elif scale == "batch":
            denom = batch_std + eps
        else:
            denom = 1.0
        for i in idx:
            out[i] = (r[i] - mean) / denom
    return out


def _agg_weight(loss_agg, len_b, n_seq, n_tok, batch, norm_len):
    """The weight of one loss token under each aggregation (token_mean, seq_mean, dr_grpo)."""
    if loss_agg == "token_mean":
        return 1.0 / n_tok
    if loss_agg == "seq_mean":
        return 1.0 / len_b / n_seq
    return 1.0 / (batch * norm_len)


def grpo_loss_np(logp, old, ref, adv, mask, loss_agg, eps_low, eps_high, beta, dual_c=None, max_len=None):
    """Returns (loss, dloss/dlogp) in float64."""
    logp, old, ref, adv, mask = (np.asarray(x, np.float64) for x in (logp, old, ref, adv, mask))
    B, L = logp.shape
    loss = 0.0
    grad = np.zeros((B, L))
    lens = mask.sum(1)
    n_seq = max(int((lens > 0).sum()), 1)
    n_tok = max(mask.sum(), 1.0)
    for b in range(B):
        A = adv[b]
        for t in range(L):
            if mask[b, t] == 0:
                continue
            w = _agg_weight(loss_agg, lens[b], n_seq, n_tok, B, max_len or L)
            r = np.exp(logp[b, t] - old[b, t])
            rc = min(max(r, 1 - eps_low), 1 + eps_high)
            # objective and its derivative wrt logp (dr/dlogp = r)
            if r * A <= rc * A:
                obj, dobj = r * A, r * A
            else:
                obj, dobj = rc * A, 0.0  # clipped branch is constant in logp
            if dual_c is not None and A < 0 and obj < dual_c * A:
                obj, dobj = dual_c * A, 0.0
            x = ref[b, t] - logp[b, t]
            kl = np.exp(x) - x - 1
            dkl = -np.exp(x) + 1
            loss += w * (-obj + beta * kl)
            grad[b, t] = w * (-dobj + beta * dkl)
    return loss, grad


def logprobs_np(hidden, w, targets):
    """Naive full-logits log p(target) and entropy in float64."""
    logits = np.einsum("btd,dv->btv", np.asarray(hidden, np.float64), np.asarray(w, np.float64))
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    logp_all = logits - lse[..., None]
    p = np.exp(logp_all)
    tgt = np.take_along_axis(logp_all, np.asarray(targets)[..., None], -1)[..., 0]
    ent = -(p * logp_all).sum(-1)
    return tgt, ent, p


# ── variants beyond vanilla GRPO (written from the papers' formulas, with loops) ───────────────


def is_weights_np(old, sampler, mask, mode, cap):
    """Per-token importance weight of the sampler/trainer correction, float64 [B, L] (0 off the mask).

    ρ = π_old(trainer) / π_sampler. Token modes: ρ_t = exp(old_t - sampler_t). Sequence modes: one
    ρ per completion, exp of the mean over its loss tokens of (old_t - sampler_t). Truncated IS (Yao
    et al. 2025): w = min(ρ, C). Masked IS: w = 1 inside [1/C, C], else 0."""
    old, sampler, mask = (np.asarray(x, np.float64) for x in (old, sampler, mask))
    B, L = old.shape
    w = np.zeros((B, L))
    for b in range(B):
        toks = [t for t in range(L) if mask[b, t] != 0]
        if not toks:
            continue
        if mode.endswith("_seq"):
            seq_log_rho = sum(old[b, t] - sampler[b, t] for t in toks) / len(toks)
            rho = {t: np.exp(seq_log_rho) for t in toks}
        else:
            rho = {t: np.exp(old[b, t] - sampler[b, t]) for t in toks}
        for t in toks:
            if mode.startswith("tis"):
                w[b, t] = min(rho[t], cap)
            else:
                w[b, t] = 1.0 if 1.0 / cap <= rho[t] <= cap else 0.0
    return w


def grpo_is_loss_np(logp, old, ref, adv, mask, is_w, loss_agg, eps_low, eps_high, beta, dual_c=None,
                    max_len=None):
    """GRPO with a per-token IS weight on the policy-gradient term only (not the KL):
    ℓ_t = -w_t · min(r_t A, clip(r_t) A) + β k3_t. Returns (loss, dloss/dlogp)."""
    logp, old, ref, adv, mask, is_w = (np.asarray(x, np.float64) for x in (logp, old, ref, adv, mask, is_w))
    B, L = logp.shape
    lens = mask.sum(1)
    n_seq = max(int((lens > 0).sum()), 1)
    n_tok = max(mask.sum(), 1.0)
    loss, grad = 0.0, np.zeros((B, L))
    for b in range(B):
        A = adv[b]
        for t in range(L):
            if mask[b, t] == 0:
                continue
            w = _agg_weight(loss_agg, lens[b], n_seq, n_tok, B, max_len or L)
            r = np.exp(logp[b, t] - old[b, t])
            rc = min(max(r, 1 - eps_low), 1 + eps_high)
            obj, dobj = (r * A, r * A) if r * A <= rc * A else (rc * A, 0.0)
            if dual_c is not None and A < 0 and obj < dual_c * A:
                obj, dobj = dual_c * A, 0.0
            x = ref[b, t] - logp[b, t]
            loss += w * (-is_w[b, t] * obj + beta * (np.exp(x) - x - 1))
            grad[b, t] = w * (-is_w[b, t] * dobj + beta * (1 - np.exp(x)))
    return loss, grad


def gspo_loss_np(logp, old, ref, adv, mask, eps_low, eps_high, beta, dual_c=None, is_w=None):
    """GSPO (Zheng et al. 2025: J_GSPO, its gradient, GSPO-token), float64. Returns (loss, dloss/dlogp).

    s_i = (π_θ(y_i|x) / π_old(y_i|x))^(1/|y_i|) = exp((1/|y_i|) Σ_t (logp_t - old_t)),
    J = (1/G) Σ_i (1/|y_i|) Σ_t w_it · min(s_i A_i, clip(s_i, 1-ε_low, 1+ε_high) A_i) (GSPO-token with
    the IS weight w_it; with w = 1 it is GSPO's (1/G) Σ_i min(s_i A_i, clip(s_i) A_i)), G = the
    sequences with loss tokens, plus the seq-mean KL (1/G) Σ_i (1/|y_i|) Σ_t β k3_it.
    Gradient (GSPO-token): ∇_{logp_t} of token t's term is w_it · A_i · s_i on the unclipped
    branch (∂s_it/∂logp_t = s_i, s_it = sg[s_i] π_t / sg[π_t]), 0 where the clip is active; with one w
    per sequence this is the paper's ∇J_GSPO = E[(1/G) Σ_i s_i A_i (1/|y_i|) Σ_t ∇ log π_t] (unclipped)."""
    logp, old, ref, adv, mask = (np.asarray(x, np.float64) for x in (logp, old, ref, adv, mask))
    B, L = logp.shape
    is_w = np.ones((B, L)) if is_w is None else np.asarray(is_w, np.float64)
    seqs = [b for b in range(B) if mask[b].sum() > 0]
    n_seq = max(len(seqs), 1)
    loss, grad = 0.0, np.zeros((B, L))
    for b in seqs:
        toks = [t for t in range(L) if mask[b, t] != 0]
        n = len(toks)
        A = adv[b]
        s = np.exp(sum(logp[b, t] - old[b, t] for t in toks) / n)
        sc = min(max(s, 1 - eps_low), 1 + eps_high)
        J, dJ_ds = (s * A, A) if s * A <= sc * A else (sc * A, 0.0)
        if dual_c is not None and A < 0 and J < dual_c * A:
            J, dJ_ds = dual_c * A, 0.0
        for t in toks:
            x = ref[b, t] - logp[b, t]
            loss += (-is_w[b, t] * J + beta * (np.exp(x) - x - 1)) / n / n_seq
            grad[b, t] = (-is_w[b, t] * dJ_ds * s + beta * (1 - np.exp(x))) / n / n_seq
    return loss, grad


def gspo_sequence_objective_np(logp, old, adv, mask, eps_low, eps_high):
    """GSPO's sequence-level loss as the paper writes J_GSPO: -(1/G) Σ_i min(s_i A_i, clip(s_i) A_i)
    (a plain function of logp, for finite differences)."""
    total, n_seq = 0.0, 0
    for b in range(logp.shape[0]):
        toks = [t for t in range(logp.shape[1]) if mask[b, t] != 0]
        if not toks:
            continue
        n_seq += 1
        s = np.exp(np.mean([logp[b, t] - old[b, t] for t in toks]))
        total += min(s * adv[b], min(max(s, 1 - eps_low), 1 + eps_high) * adv[b])
    return -total / max(n_seq, 1)


def overlong_penalty_np(length, max_len, buffer):
    """DAPO eq. 13, one completion: R_length(|y|) with L_max = max_len, L_cache = buffer."""
    if length <= max_len - buffer:
        return 0.0
    if length <= max_len:
        return ((max_len - buffer) - length) / buffer
    return -1.0
