"""The samplers draw from the right distribution: float64 NumPy reference + chi-square on fixed rngs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rollout_reference import reference_probs

from r1jax.rollout import sampling
from r1jax.rollout.types import SamplingParams

PROBS = np.array([0.30, 0.22, 0.18, 0.12, 0.08, 0.05, 0.03, 0.02])
LOGITS = np.log(PROBS) + 1.7  # an offset: logits are not normalised
N_DRAWS = 40_000
SAMPLE_JIT = jax.jit(sampling.sample_tokens, static_argnames=("top_k", "top_p_active"))


def chi2_critical(df, z=4.26):
    """Wilson-Hilferty quantile of chi-square(df); z=4.26 is a one-sided p of 1e-5."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_stat(counts, probs):
    support = probs > 0
    expected = probs[support] * counts.sum()
    return float(np.sum((counts[support] - expected) ** 2 / expected)), int(support.sum()) - 1


@pytest.fixture(scope="module")
def draw():
    cache = {}

    def _draw(temperature, top_p, top_k, seed=0):
        key = (temperature, top_p, top_k, seed)
        if key not in cache:
            logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (N_DRAWS, len(LOGITS)))
            cache[key] = jax.device_get(
                SAMPLE_JIT(
                    jax.random.key(seed), logits, temperature, top_p, top_k=top_k, top_p_active=top_p < 1.0
                )
            )
        return cache[key]

    return _draw


# (1.0, 0.99, 0) needs all 8 tokens (the nucleus is the whole vocabulary); top-k settings take the
# lax.top_k path, the others the bisection threshold and the inverse-CDF draw
SETTINGS = [(1.0, 0.99, 0),
    (1.0, 1.0, 0),
    (0.6, 1.0, 0),
    (1.3, 1.0, 0),
    (1.0, 0.7, 0),
    (0.6, 0.95, 0),
    (1.0, 1.0, 3),
    (0.8, 0.8, 5),
    (1.5, 0.5, 4),
]


@pytest.mark.parametrize("temperature,top_p,top_k", SETTINGS)
def test_samples_follow_reference_distribution(draw, temperature, top_p, top_k):
    tokens, logp_sampling, logp_policy = draw(temperature, top_p, top_k)
    ref = reference_probs(LOGITS, temperature, top_p, top_k)
    counts = np.bincount(tokens, minlength=len(LOGITS))
    # exact: nothing outside the support is ever drawn
    assert counts[ref == 0].sum() == 0, (counts, ref)
    stat, df = chi2_stat(counts, ref)
    if df > 0:
        assert stat < chi2_critical(df), (stat, df, counts / N_DRAWS, ref)
    # the returned log-probs are the log-probs of the drawn tokens under both distributions
    np.testing.assert_allclose(logp_sampling, np.log(ref[tokens]), atol=2e-5)
    policy = np.exp(LOGITS - LOGITS.max()) / np.exp(LOGITS - LOGITS.max()).sum()
    np.testing.assert_allclose(logp_policy, np.log(policy[tokens]), atol=2e-5)


@pytest.mark.parametrize(
    "temperature,top_p,top_k,wrong",
    [
        (0.6, 1.0, 0, dict(temperature=1.0)),  # temperature ignored
        (1.0, 0.7, 0, dict(top_p=1.0)),  # top-p ignored
        (1.0, 0.7, 0, dict(top_p=0.8)),  # off-by-one nucleus (keeps one token too many)
        (1.0, 1.0, 3, dict(top_k=4)),  # off-by-one top-k
    ],
)
def test_the_test_rejects_a_wrong_sampler(draw, temperature, top_p, top_k, wrong):
    """The chi-square test has power: the right samples are rejected against a wrong reference."""
    tokens, _, _ = draw(temperature, top_p, top_k)
    settings = dict(temperature=temperature, top_p=top_p, top_k=top_k) | wrong
    wrong_ref = reference_probs(LOGITS, **settings)
    counts = np.bincount(tokens, minlength=len(LOGITS))
    outside = counts[wrong_ref == 0].sum() > 0
    stat, df = chi2_stat(counts, wrong_ref) if not outside else (np.inf, 1)
    assert outside or stat > chi2_critical(df)


def test_deterministic_for_fixed_rng_and_differs_across_rngs(draw):
    a, _, _ = draw(1.0, 1.0, 0, seed=0)
    logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (N_DRAWS, len(LOGITS)))
    b, _, _ = SAMPLE_JIT(jax.random.key(0), logits, 1.0, 1.0, top_k=0, top_p_active=False)
    np.testing.assert_array_equal(a, np.asarray(b))
    c, _, _ = draw(1.0, 1.0, 0, seed=1)
    assert (a != c).mean() > 0.5


def test_greedy_is_argmax_with_zero_sampling_logp():
    logits = jax.random.normal(jax.random.key(3), (16, 50))
    tokens, logp_s, logp_p = SAMPLE_JIT(jax.random.key(0), logits, 0.0, 0.9, top_k=5, top_p_active=True)
    np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits), -1))
    np.testing.assert_array_equal(logp_s, 0.0)
    np.testing.assert_allclose(logp_p, np.max(jax.nn.log_softmax(logits), -1), atol=1e-6)


def test_wide_nucleus_is_exact():
    """A flat distribution whose nucleus spans hundreds of tokens (the case a candidate slice cannot
    hold): exact support, right frequencies, right log-probs."""
    vocab = 256
    logits = np.random.default_rng(0).normal(0, 0.1, vocab).astype(np.float32)
    ref = reference_probs(logits, 1.0, 0.3)
    assert (ref > 0).sum() > 64
    filter_jit = jax.jit(sampling.filter_logits, static_argnames=("top_k", "top_p_active"))
    filtered = np.asarray(filter_jit(jnp.asarray(logits[None]), 0.3, top_k=0, top_p_active=True))[0]
    np.testing.assert_array_equal(np.isfinite(filtered), ref > 0)
    draws = 20_000
    tokens, logp_s, _ = SAMPLE_JIT(jax.random.key(5), jnp.broadcast_to(jnp.asarray(logits), (draws, vocab)),
                                   1.0, 0.3, top_k=0, top_p_active=True)
    counts = np.bincount(np.asarray(tokens), minlength=vocab)
    assert counts[ref == 0].sum() == 0
    stat, df = chi2_stat(counts, ref)
    assert stat < chi2_critical(df)
    np.testing.assert_allclose(np.asarray(logp_s), np.log(ref[np.asarray(tokens)]), atol=2e-5)


@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0, 12.0])
def test_nucleus_support_matches_the_sorted_definition_row_by_row(scale):
    """The bisection threshold keeps exactly the tokens the sort-based definition keeps, on many rows of a
    vocabulary that is not a multiple of the draw block, from near-flat to peaked, for several top_p."""
    rng = np.random.default_rng(int(scale * 100))
    vocab, rows = 1000, 24
    logits = (rng.normal(0, scale, (rows, vocab))).astype(np.float32)
    filter_jit = jax.jit(sampling.filter_logits, static_argnames=("top_k", "top_p_active"))
    for top_p in (0.05, 0.5, 0.9, 0.999):
        kept = np.isfinite(np.asarray(filter_jit(jnp.asarray(logits), top_p, top_k=0, top_p_active=True)))
        for row in range(rows):
            np.testing.assert_array_equal(kept[row], reference_probs(logits[row], 1.0, top_p) > 0,
                                          err_msg=f"row {row}, top_p {top_p}")


def test_ties_at_the_threshold_are_all_kept():
    """Logits on a coarse grid (many exact ties): every token tied with the last kept one is kept
    (the sort-based reference cuts by index; the documented semantics is its threshold)."""
    logits = np.repeat(np.array([3.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.0], np.float32), 40)
    np.random.default_rng(1).shuffle(logits)
    for top_p in (0.2, 0.6, 0.95):
        index_cut = reference_probs(logits, 1.0, top_p) > 0
        kept = np.isfinite(np.asarray(sampling.filter_logits(jnp.asarray(logits[None]), top_p, top_k=0,
                                                             top_p_active=True))[0])
        np.testing.assert_array_equal(kept, logits >= logits[index_cut].min())
        assert not kept.all()


def test_full_vocabulary_draw_follows_the_distribution():
    """The two-level inverse-CDF draw (T = 1, no truncation) over a vocabulary spanning several draw
    blocks and a partial last block, with zero-probability tokens that must never be drawn."""
    vocab = 700
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1.5, vocab).astype(np.float32)
    logits[rng.choice(vocab, 50, replace=False)] = -1e30  # probability exactly 0 after exp
    draws = 200_000
    tokens, logp_s, logp_p = SAMPLE_JIT(jax.random.key(7), jnp.broadcast_to(jnp.asarray(logits), (draws, vocab)),
                                        1.0, 1.0, top_k=0, top_p_active=False)
    ref = reference_probs(logits, 1.0)
    counts = np.bincount(np.asarray(tokens), minlength=vocab)
    assert counts[ref == 0].sum() == 0
    stat, df = chi2_stat(counts, ref)
    assert stat < chi2_critical(df), (stat, df)
    np.testing.assert_allclose(np.asarray(logp_s), np.log(ref[np.asarray(tokens)]), atol=2e-5)
    np.testing.assert_allclose(np.asarray(logp_p), np.asarray(logp_s), atol=2e-5)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(n=0), "n"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(stop_strings=("",)), "stop_strings"),
        (dict(stop_sequences=((),)), "stop_sequences"),
        (dict(stop_token_ids=(-3,)), "stop_token_ids"),
    ],
)
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_sampling_params_types():
    with pytest.raises(TypeError, match="stop_strings"):
        SamplingParams(stop_strings="</answer>")
    with pytest.raises(TypeError, match="top_k"):
        SamplingParams(top_k=2.5)
    p = SamplingParams(stop_token_ids=[1, 2], stop_sequences=[[3, 4]], stop_strings=["x"])
    assert p.stop_token_ids == (1, 2) and p.stop_sequences == ((3, 4),) and p.stop_strings == ("x",)
    hash(p)
