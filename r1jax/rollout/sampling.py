"""Sampling as pure functions of logits: temperature, top-k, top-p (nucleus), greedy.

Semantics (the reference the tests check against a float64 NumPy formula):
  scaled = logits / T;  keep the top_k largest (0 = all);  among those, keep the smallest
  most-likely-first prefix whose probability (renormalised over the kept set) reaches top_p;
  sample from softmax(scaled) restricted to the kept set. Tokens tied with the last kept
  logit are kept too (a threshold, not an index cut), so ties never depend on sort order.
  T == 0 is greedy: argmax, sampling log-prob 0.

temperature and top_p are traced scalars (changing them does not recompile); top_k and whether
top-p is active are static because they change the program (lax.top_k needs a static k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf

# Top-p first looks for the nucleus among this many best tokens (a cheap lax.top_k); only when some
# row's nucleus is wider does it sort the whole vocabulary. Exact either way.
TOP_P_CANDIDATES = 64


def _nucleus_threshold(sorted_desc_bk: jax.Array, top_p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Given logits sorted descending, the smallest kept logit and whether the nucleus fits in the slice.

    A token is kept while the mass of the tokens before it is < top_p (so the first one always is).
    The probabilities are normalised over the full slice, so pass the whole kept set (all of the
    vocabulary, or the top-k) for the exact result.
    """
    probs_bk = jax.nn.softmax(sorted_desc_bk, axis=-1)
    before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    n_keep_b = jnp.sum(before_bk < top_p, axis=-1)
    threshold_b = jnp.take_along_axis(sorted_desc_bk, (n_keep_b - 1)[:, None], axis=-1)[:, 0]
    return threshold_b, n_keep_b < sorted_desc_bk.shape[-1]


def _nucleus_threshold_wide(scaled_bv: jax.Array, top_p: jax.Array) -> jax.Array:
    """Top-p threshold over the whole vocabulary: a top-k slice when every row's nucleus fits in it,
    else a full sort. The slice is normalised by the full-vocabulary logsumexp so it is exact."""
    k = min(TOP_P_CANDIDATES, scaled_bv.shape[-1])
    top_bk, _ = jax.lax.top_k(scaled_bv, k)
    lse_b = jax.nn.logsumexp(scaled_bv, axis=-1)
    probs_bk = jnp.exp(top_bk - lse_b[:, None])
    before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    n_keep_b = jnp.sum(before_bk < top_p, axis=-1)
    fits = jnp.all(n_keep_b < k)

    def from_slice(_):
        return jnp.take_along_axis(top_bk, (n_keep_b - 1)[:, None], axis=-1)[:, 0]

    def from_sort(_):
        sorted_bv = -jnp.sort(-scaled_bv, axis=-1)
        return _nucleus_threshold(sorted_bv, top_p)[0]

    return jax.lax.cond(fits, from_slice, from_sort, None)


def filter_logits(scaled_bv: jax.Array, top_p, *, top_k: int, top_p_active: bool) -> jax.Array:
    """Temperature-scaled logits -> the same logits with -inf outside the top-k / top-p support."""
    scaled_bv = scaled_bv.astype(jnp.float32)
    vocab = scaled_bv.shape[-1]
    if top_k and top_k < vocab:
        top_bk, _ = jax.lax.top_k(scaled_bv, top_k)  # sorted descending
        threshold_b = top_bk[:, -1]
        if top_p_active:
            threshold_b = jnp.maximum(threshold_b, _nucleus_threshold(top_bk, top_p)[0])
    elif top_p_active:
        threshold_b = _nucleus_threshold_wide(scaled_bv, top_p)
    else:
        return scaled_bv
    return jnp.where(scaled_bv >= threshold_b[:, None], scaled_bv, NEG_INF)


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
    filtered_bv = filter_logits(scaled_bv, top_p, top_k=top_k, top_p_active=top_p_active)

    sampled_b = jax.random.categorical(rng, filtered_bv, axis=-1)
    tokens_b = jnp.where(greedy, jnp.argmax(logits_bv, axis=-1), sampled_b).astype(jnp.int32)

    def logp_of(logits):
        chosen_b = jnp.take_along_axis(logits, tokens_b[:, None], axis=-1)[:, 0]
        return chosen_b - jax.nn.logsumexp(logits, axis=-1)

    logp_sampling_b = jnp.where(greedy, 0.0, logp_of(filtered_bv))
    return tokens_b, logp_sampling_b, logp_of(logits_bv)
