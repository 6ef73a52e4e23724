"""Sampling as pure functions of logits: temperature, top-k, top-p (nucleus), greedy.

Semantics (the reference the tests check against a float64 NumPy formula):
  scaled = logits / T;  keep the top_k largest (0 = all);  among those, keep the smallest
  most-likely-first prefix whose probability (renormalised over the kept set) reaches top_p;
  sample from softmax(scaled) restricted to the kept set. Tokens tied with the last kept
  logit are kept too (a threshold, not an index cut); top-k keeps exactly k tokens (ties broken
  toward the lower id, as lax.top_k and a stable sort do).
  T == 0 is greedy: argmax, sampling log-prob 0.

temperature and top_p are traced scalars (changing them does not recompile); top_k and whether
top-p is active are static because they change the program (lax.top_k needs a static k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf

# Top-p first looks for the nucleus among this many best tokens (one lax.top_k); when every row's
# nucleus fits, the token is drawn among them (B x 64 random numbers instead of B x V). Only when some
# row's nucleus is wider does it sort the whole vocabulary. Exact either way.
TOP_P_CANDIDATES = 64


def _nucleus_threshold(sorted_desc_bk: jax.Array, top_p: jax.Array) -> jax.Array:
    """Given logits sorted descending (the whole kept set), the smallest logit in the nucleus.

    A token is kept while the mass of the tokens before it is < top_p (so the first one always is).
    """
    probs_bk = jax.nn.softmax(sorted_desc_bk, axis=-1)
    before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    n_keep_b = jnp.sum(before_bk < top_p, axis=-1)
    return jnp.take_along_axis(sorted_desc_bk, (n_keep_b - 1)[:, None], axis=-1)[:, 0]


def filter_logits(scaled_bv: jax.Array, top_p, *, top_k: int, top_p_active: bool) -> jax.Array:
    """Temperature-scaled logits -> the same logits with -inf outside the top-k / top-p support
    (the full-vocabulary form of what `sample_tokens` draws from)."""
    scaled_bv = scaled_bv.astype(jnp.float32)
    vocab = scaled_bv.shape[-1]
    if 0 < top_k < vocab:
        top_bk, idx_bk = jax.lax.top_k(scaled_bv, top_k)
        if top_p_active:
            top_bk = jnp.where(top_bk >= _nucleus_threshold(top_bk, top_p)[:, None], top_bk, NEG_INF)
        rows = jnp.arange(scaled_bv.shape[0])[:, None]
        return jnp.full_like(scaled_bv, NEG_INF).at[rows, idx_bk].set(top_bk)
    if top_p_active:
        threshold_b = _nucleus_threshold(-jnp.sort(-scaled_bv, axis=-1), top_p)
        return jnp.where(scaled_bv >= threshold_b[:, None], scaled_bv, NEG_INF)
    return scaled_bv


def _draw(rng, logits_bk, idx_bk=None):
    """Categorical draw over the last axis (-inf = excluded): (token ids, log-prob under the
    renormalised distribution). idx_bk maps candidate positions back to token ids."""
    choice_b = jax.random.categorical(rng, logits_bk, axis=-1)
    chosen_b = jnp.take_along_axis(logits_bk, choice_b[:, None], axis=-1)[:, 0]
    tokens_b = choice_b if idx_bk is None else jnp.take_along_axis(idx_bk, choice_b[:, None], axis=-1)[:, 0]
    return tokens_b.astype(jnp.int32), chosen_b - jax.nn.logsumexp(logits_bk, axis=-1)


def _draw_top_p(rng, scaled_bv, top_p):
    k = min(TOP_P_CANDIDATES, scaled_bv.shape[-1])
    top_bk, idx_bk = jax.lax.top_k(scaled_bv, k)
    probs_bk = jnp.exp(top_bk - jax.nn.logsumexp(scaled_bv, axis=-1)[:, None])  # normalised over the vocab
    before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    n_keep_b = jnp.sum(before_bk < top_p, axis=-1)
    threshold_b = jnp.take_along_axis(top_bk, (n_keep_b - 1)[:, None], axis=-1)[:, 0]
    # the slice holds the whole nucleus, and no token outside it ties with the threshold
    fits = jnp.all((n_keep_b < k) & (top_bk[:, -1] < threshold_b))
    return jax.lax.cond(
        fits,
        lambda: _draw(rng, jnp.where(top_bk >= threshold_b[:, None], top_bk, NEG_INF), idx_bk),
        lambda: _draw(rng, filter_logits(scaled_bv, top_p, top_k=0, top_p_active=True)),
    )


def sample_tokens(
    rng: jax.Array,
    logits_bv: jax.Array,
    temperature,
    top_p,
    *,
    top_k: int = 0,
    top_p_active: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One token per row. Returns (tokens_b int32, logp_sampling_b, logp_policy_b) in float32.

    logp_sampling is the log-prob of the token under the distribution it was drawn from; logp_policy
    under the unmodified model (T=1, no truncation) — the number the trainer recomputes.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = temperature <= 0
    scaled_bv = logits_bv / jnp.where(greedy, 1.0, temperature)
    vocab = logits_bv.shape[-1]
    if 0 < top_k < vocab:  # draw among the top-k candidates only
        top_bk, idx_bk = jax.lax.top_k(scaled_bv, top_k)
        if top_p_active:
            top_bk = jnp.where(top_bk >= _nucleus_threshold(top_bk, top_p)[:, None], top_bk, NEG_INF)
        sampled_b, logp_b = _draw(rng, top_bk, idx_bk)
    elif top_p_active:
        sampled_b, logp_b = _draw_top_p(rng, scaled_bv, top_p)
    else:
        sampled_b, logp_b = _draw(rng, scaled_bv)

    argmax_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    tokens_b = jnp.where(greedy, argmax_b, sampled_b)
    chosen_b = jnp.take_along_axis(logits_bv, tokens_b[:, None], axis=-1)[:, 0]
    logp_policy_b = chosen_b - jax.nn.logsumexp(logits_bv, axis=-1)
    return tokens_b, jnp.where(greedy, 0.0, logp_b), logp_policy_b
