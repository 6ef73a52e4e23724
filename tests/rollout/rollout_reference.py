"""Independent float64 references for the rollout tests."""

import numpy as np


def reference_probs(logits, temperature, top_p=1.0, top_k=0):
    """Sampling distribution from the definition (sort, cut top-k, cut top-p, renormalise), float64."""
    z = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    k = len(z) if top_k == 0 else top_k
    kept = order[:k]
    p = np.exp(z[kept] - z[kept].max())
    p /= p.sum()
    keep = np.zeros(z.shape, bool)
    mass = 0.0
    for tok, pt in zip(kept, p):
        if mass >= top_p:
            break
        keep[tok] = True
        mass += pt
    out = np.where(keep, np.exp(z - z.max()), 0.0)
    return out / out.sum()


def log_softmax64(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
