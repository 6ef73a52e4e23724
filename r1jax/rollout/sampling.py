"""Sampling as pure functions of logits: temperature, top-k, top-p (nucleus), greedy — without sorting.

Semantics (the reference the tests check against a float64 NumPy formula):
  scaled = logits / T;  keep the top_k largest (0 = all);  among those, keep the smallest
  most-likely-first prefix whose probability (renormalised over the kept set) reaches top_p;
  sample from softmax(scaled) restricted to the kept set. Tokens tied with the last kept logit are
  kept too (a threshold, not an index cut); top-k keeps exactly k tokens (ties broken toward the lower
  id, as lax.top_k and a stable sort do).  T == 0 is greedy: argmax, sampling log-prob 0.

How, per decode step (B x V; sorting the vocabulary costs more than the model's forward on CPU, and
XLA's CPU backend turns a lax.top_k whose result feeds a conditional into that full sort):
  * top-p: the nucleus is {p >= tau}, tau the largest probability whose "mass at or above" still
    reaches top_p. That mass is monotone in tau, so tau is found by bisection on the bit pattern of
    the float32 probability (monotone for positive floats): 31 masked sums over V, whatever the
    nucleus width, and exact: tau ends as one of the probabilities, so ties at the threshold are kept.
  * the draw is an inverse-CDF draw with one uniform per row, two-level (block sums, then one block's
    cumulative sum), instead of V Gumbel numbers per row.
  * top-k (a static k) keeps the one lax.top_k and draws among its k candidates.

temperature and top_p are traced scalars (changing them does not recompile); top_k and whether
top-p is active are static because they change the program (lax.top_k needs a static k).

Returned log-probs (docs/contracts.md § Rollout): logp_sampling is the log-prob of the drawn token under
the distribution it was drawn from (temperature, truncation, renormalised); logp_policy under the
unmodified model (T = 1, no truncation), the number the trainer recomputes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf

# Block width of the two-level inverse-CDF draw (the block sums and one block's cumsum are both small).
_DRAW_BLOCK = 256
# Positive float32 bit patterns in [0, 1]: 0 is 0.0, 0x3F800000 is 1.0 (the largest exp(s - max)).
_ONE_BITS = 0x3F800000


def row_keys(rng: jax.Array, rows: int) -> jax.Array:
    """One key per row: `rng` itself when it already is a batch of keys [rows], else split from it.
    A caller that derives each row's key from the row's identity (the sampler does) gets draws that do
    not depend on which other rows share the batch, or in which order."""
    typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
    if rng.ndim == (1 if typed else 2):
        return rng
    return jax.random.split(rng, rows)


def _nucleus_threshold(sorted_desc_bk: jax.Array, top_p: jax.Array) -> jax.Array:
    """Given logits sorted descending (the whole kept set), the smallest logit in the nucleus.

    A token is kept while the mass of the tokens before it is < top_p (so the first one always is).
    """
    probs_bk = jax.nn.softmax(sorted_desc_bk, axis=-1)
    before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    n_keep_b = jnp.sum(before_bk < top_p, axis=-1)
    return jnp.take_along_axis(sorted_desc_bk, (n_keep_b - 1)[:, None], axis=-1)[:, 0]


def _nucleus_floor(e_bv: jax.Array, target_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """e_bv = exp(scaled - max) in [0, 1] (each row's maximum is exactly 1); target = top_p * sum(e).

    -> (tau_b, mass_b): tau is the largest of the row's values with sum(e[e >= tau]) >= target, and
    mass that sum. The nucleus is {e >= tau}: a token is in it iff the mass strictly above it is
    < target (the definition), ties with tau included. Invariant: mass(lo) >= target > mass(hi).
    """
    rows = e_bv.shape[0]

    def mass(bits_b):
        tau_b = jax.lax.bitcast_convert_type(bits_b, jnp.float32)
        return jnp.sum(jnp.where(e_bv >= tau_b[:, None], e_bv, 0.0), axis=-1)

    def step(_, lo_hi):
        lo_b, hi_b = lo_hi
        mid_b = lo_b + (hi_b - lo_b) // 2
        ok_b = mass(mid_b) >= target_b
        return jnp.where(ok_b, mid_b, lo_b), jnp.where(ok_b, hi_b, mid_b)

    lo_b = jnp.zeros((rows,), jnp.int32)  # 0.0: everything, mass = sum(e) >= target
    hi_b = jnp.full((rows,), _ONE_BITS + 1, jnp.int32)  # just above 1.0: nothing, mass 0 < target
    n_steps = int(_ONE_BITS + 1).bit_length()  # hi - lo halves each step: after this many it is 1
    lo_b, _ = jax.lax.fori_loop(0, n_steps, step, (lo_b, hi_b))
    return jax.lax.bitcast_convert_type(lo_b, jnp.float32), mass(lo_b)


def _inverse_cdf(rng: jax.Array, w_bv: jax.Array) -> jax.Array:
    """One draw per row with probability w / sum(w) (w >= 0, some w > 0 per row): the index whose
    cumulative weight first exceeds u * sum(w), found block by block. -> int32 [B]."""
    rows, vocab = w_bv.shape
    blk = min(_DRAW_BLOCK, vocab)
    n_blk = -(-vocab // blk)
    w_bnk = jnp.pad(w_bv, ((0, 0), (0, n_blk * blk - vocab))).reshape(rows, n_blk, blk)
    block_bn = jnp.sum(w_bnk, axis=-1)
    cum_bn = jnp.cumsum(block_bn, axis=-1)
    u_b = jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(row_keys(rng, rows))
    target_b = u_b * cum_bn[:, -1]

    def pick(cum_bx, positive_bx, t_b):
        # first entry whose cumulative weight exceeds t: it has weight > 0 (u = 0 included); rounding
        # can push t past the last sum, so the pick is capped at the last entry with weight
        i_b = jnp.sum(cum_bx <= t_b[:, None], axis=-1)
        last_b = positive_bx.shape[-1] - 1 - jnp.argmax(positive_bx[:, ::-1], axis=-1)
        return jnp.minimum(i_b, last_b)

    j_b = pick(cum_bn, block_bn > 0, target_b)
    before_b = jnp.where(j_b > 0, jnp.take_along_axis(cum_bn, (j_b - 1)[:, None], axis=-1)[:, 0], 0.0)
    inner_bk = jnp.take_along_axis(w_bnk, j_b[:, None, None], axis=1)[:, 0]
    i_b = pick(jnp.cumsum(inner_bk, axis=-1), inner_bk > 0, target_b - before_b)
    return (j_b * blk + i_b).astype(jnp.int32)


def _draw(rng, logits_bk, idx_bk=None):
    """Categorical draw over a short last axis (-inf = excluded): (token ids, log-prob under the
    renormalised distribution). idx_bk maps candidate positions back to token ids."""
    keys = row_keys(rng, logits_bk.shape[0])
    choice_b = jax.vmap(lambda key, row_k: jax.random.categorical(key, row_k))(keys, logits_bk)
    chosen_b = jnp.take_along_axis(logits_bk, choice_b[:, None], axis=-1)[:, 0]
    tokens_b = choice_b if idx_bk is None else jnp.take_along_axis(idx_bk, choice_b[:, None], axis=-1)[:, 0]
    return tokens_b.astype(jnp.int32), chosen_b - jax.nn.logsumexp(logits_bk, axis=-1)


def _draw_full_vocab(rng, scaled_bv, top_p=None):
    """Draw over the whole vocabulary (restricted to the nucleus when top_p is given), no sort:
    -> (tokens_b, log-prob under the distribution drawn from)."""
    e_bv = jnp.exp(scaled_bv - jnp.max(scaled_bv, axis=-1, keepdims=True))
    z_b = jnp.sum(e_bv, axis=-1)
    if top_p is not None:
        tau_b, z_b = _nucleus_floor(e_bv, top_p * z_b)
        e_bv = jnp.where(e_bv >= tau_b[:, None], e_bv, 0.0)
    tokens_b = _inverse_cdf(rng, e_bv)
    chosen_b = jnp.take_along_axis(e_bv, tokens_b[:, None], axis=-1)[:, 0]
    return tokens_b, jnp.log(chosen_b) - jnp.log(z_b)


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
        e_bv = jnp.exp(scaled_bv - jnp.max(scaled_bv, axis=-1, keepdims=True))
        tau_b, _ = _nucleus_floor(e_bv, top_p * jnp.sum(e_bv, axis=-1))
        return jnp.where(e_bv >= tau_b[:, None], scaled_bv, NEG_INF)
    return scaled_bv


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

    rng: one key, or one key per row (`row_keys`).

    logp_sampling is the log-prob of the token under the distribution it was drawn from; logp_policy
    under the unmodified model (T=1, no truncation) — the number the trainer recomputes.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    vocab = logits_bv.shape[-1]

    def sampled():
        scaled_bv = logits_bv / temperature
        if 0 < top_k < vocab:  # draw among the top-k candidates only
            top_bk, idx_bk = jax.lax.top_k(scaled_bv, top_k)
            if top_p_active:
                top_bk = jnp.where(top_bk >= _nucleus_threshold(top_bk, top_p)[:, None], top_bk, NEG_INF)
            return _draw(rng, top_bk, idx_bk)
        if top_p_active:
            return _draw_full_vocab(rng, scaled_bv, top_p)
        return _draw_full_vocab(rng, scaled_bv)

    def greedy():
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32), jnp.zeros(logits_bv.shape[:1], jnp.float32)

    # one branch runs: a sampling step pays no argmax, a greedy one no draw
    tokens_b, logp_b = jax.lax.cond(temperature <= 0, greedy, sampled)
    chosen_b = jnp.take_along_axis(logits_bv, tokens_b[:, None], axis=-1)[:, 0]
    logp_policy_b = chosen_b - jax.nn.logsumexp(logits_bv, axis=-1)
    return tokens_b, logp_b, logp_policy_b
