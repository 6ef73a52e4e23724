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
            if loss_agg == "token_mean":
                w = 1.0 / n_tok
            elif loss_agg == "seq_mean":
                w = 1.0 / lens[b] / n_seq
            else:
                w = 1.0 / (B * (max_len or L))
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
