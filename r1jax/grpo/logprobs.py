"""⑤ Per-token log-probs and entropies without the full [B, T, V] float32 logits.

The sequence is cut into chunks of `chunk` positions; each chunk's logits [B, chunk, V] are made,
reduced to (log p(target), entropy) and dropped. `jax.checkpoint` on the chunk body makes the
backward pass recompute a chunk's logits instead of storing all of them, so peak memory is one chunk
of logits in both directions (vocabularies of real models are 100k+; 16 x 8k x 152k x 4 B = 80 GB).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _chunk_stats(h_bcd, w_dv, tgt_bc):
    logits_bcv = jnp.einsum("bcd,dv->bcv", h_bcd, w_dv, preferred_element_type=jnp.float32)
    lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
    tgt_logit_bc = jnp.take_along_axis(logits_bcv, tgt_bc[..., None], axis=-1)[..., 0]
    p_bcv = jnp.exp(logits_bcv - lse_bc[..., None])
    entropy_bc = lse_bc - jnp.sum(p_bcv * logits_bcv, axis=-1)
    return tgt_logit_bc - lse_bc, entropy_bc


def token_logprobs_and_entropy(hidden_btd, w_dv, targets_bt, chunk: int):
    """(logp_bt, entropy_bt), float32: log p(targets[b, t] | hidden[b, t]) and the entropy of that
    next-token distribution. Differentiable in hidden_btd and w_dv (entropy too, though callers
    use it as a metric)."""
    b, t, d = hidden_btd.shape
    if targets_bt.shape != (b, t):
        raise ValueError(f"token_logprobs: targets_bt shape {targets_bt.shape} != hidden_btd[:2] {(b, t)}")
    if w_dv.shape[0] != d:
        raise ValueError(f"token_logprobs: w_dv shape {w_dv.shape} does not match d_model {d}")
    chunk = max(1, min(chunk, t))
    n = -(-t // chunk)
    pad = n * chunk - t
    h = jnp.pad(hidden_btd, ((0, 0), (0, pad), (0, 0)))
    tg = jnp.pad(targets_bt.astype(jnp.int32), ((0, 0), (0, pad)))
    h_nbcd = h.reshape(b, n, chunk, d).swapaxes(0, 1)
    tg_nbc = tg.reshape(b, n, chunk).swapaxes(0, 1)
    body = jax.checkpoint(lambda xs: _chunk_stats(xs[0], w_dv, xs[1]))
    logp_nbc, ent_nbc = jax.lax.map(body, (h_nbcd, tg_nbc))
    unchunk = lambda x_nbc: x_nbc.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
    return unchunk(logp_nbc), unchunk(ent_nbc)


def token_logprobs(hidden_btd, w_dv, targets_bt, chunk: int):
    """logp_bt = log p(targets[b, t] | hidden[b, t]), float32 (docs/contracts.md § GRPO)."""
    return token_logprobs_and_entropy(hidden_btd, w_dv, targets_bt, chunk)[0]


def shift_to_sequence(x_bt):
    """Position t of the model's output predicts token t + 1; the batch convention is entry t =
    log p(token t | tokens < t). Shift right by one; entry 0 (no context) is 0."""
    return jnp.pad(x_bt[:, :-1], ((0, 0), (1, 0)))
