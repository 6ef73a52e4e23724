"""Advantages (eq. 3), the loss (eq. 1-2) and every variant against the float64 NumPy reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from grpo_reference import advantages_np, grpo_loss_np

from r1jax.grpo.advantages import advantages, dynamic_sampling_keep, zero_variance_fraction
from r1jax.grpo.config import GRPOConfig
from r1jax.grpo.loss import effective_mask, grpo_loss


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_numpy(scale):
    rng = np.random.default_rng(0)
    G = 4
    rewards = rng.normal(size=6 * G).astype(np.float32)
    rewards[4:8] = 0.7  # tied group
    rewards[8:12] = [1.0, 0.0, 0.0, 0.0]
    valid = rng.random(6 * G) > 0.15
    got = np.asarray(advantages(rewards, G, scale, valid_b=valid))
    want = advantages_np(rewards, G, scale, valid=valid)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    assert np.all(got[~valid] == 0)
    assert np.all(got[4:8] == 0)


def test_tied_group_is_exact_zero_not_nan():
    G = 8
    rewards = np.full(3 * G, 0.1, np.float32)  # 0.1 does not average exactly in float32
    for scale in ("group", "batch", "none"):
        a = np.asarray(advantages(rewards, G, scale))
        assert np.all(a == 0.0) and not np.isnan(a).any(), scale
    single = np.asarray(advantages([1.0, 0.0], 2, "group", valid_b=[True, False]))
    assert np.all(single == 0.0)
    assert zero_variance_fraction(np.r_[rewards[:G], np.arange(G)], G) == 0.5


def test_dynamic_sampling_keeps_whole_informative_groups():
    rewards = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0.5, 0.5, 0.5, 0.5], np.float32)
    keep = dynamic_sampling_keep(rewards, 3)
    np.testing.assert_array_equal(keep, [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    keep4 = dynamic_sampling_keep(rewards, 4)
    np.testing.assert_array_equal(keep4, [1] * 4 + [1] * 4 + [0] * 4)


def test_advantages_bad_input_names_field():
    with pytest.raises(ValueError, match="groups of 3"):
        advantages(np.zeros(4), 3)
    with pytest.raises(ValueError, match="scale"):
        advantages(np.zeros(4), 2, "median")
    with pytest.raises(ValueError, match="loss_agg"):
        GRPOConfig(loss_agg="seq")


def _random_inputs(seed, B=6, L=9):
    rng = np.random.default_rng(seed)
    old = rng.normal(-2.0, 1.0, (B, L))
    # ratios from e^-3 to e^3: far outside any clip range, and some inside
    logp = old + rng.uniform(-3, 3, (B, L)) * (rng.random((B, L)) > 0.3)
    ref = logp + rng.normal(0, 0.5, (B, L))
    adv = rng.normal(size=B)
    mask = (rng.random((B, L)) > 0.25).astype(np.float64)
    mask[2] = 0  # one sequence with no loss tokens
    return logp, old, ref, adv, mask


VARIANTS = [
    dict(loss_agg=a, eps_low=el, eps_high=eh, beta=be, dual_clip_c=dc, max_completion_len=ml)
    for (a, ml), (el, eh), be, dc in itertools.product(
        [("token_mean", None), ("seq_mean", None), ("dr_grpo", None), ("dr_grpo", 20)],
        [(0.2, 0.2), (0.2, 0.28)],
        [0.0, 0.04],
        [None, 3.0],
    )
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_loss_and_grad_match_numpy(variant):
    cfg = GRPOConfig(**variant)
    logp, old, ref, adv, mask = _random_inputs(hash(tuple(variant.values())) % 1000)
    want_loss, want_grad = grpo_loss_np(
        logp, old, ref, adv, mask, cfg.loss_agg, cfg.eps_low, cfg.eps_high, cfg.beta,
        cfg.dual_clip_c, cfg.max_completion_len,
    )
    rest = lambda: tuple(jnp.asarray(x) for x in (old, ref, adv, mask))
    f = lambda lp: grpo_loss(lp, *rest(), cfg)[0]
    with jax.enable_x64(True):
        loss64, grad64 = jax.value_and_grad(f)(jnp.asarray(logp, jnp.float64))
    np.testing.assert_allclose(float(loss64), want_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad64), want_grad, rtol=1e-5, atol=1e-9)
    f32 = lambda lp: grpo_loss(*(jnp.asarray(x, jnp.float32) for x in (lp, old, ref, adv, mask)), cfg)[0]
    loss32, grad32 = jax.value_and_grad(f32)(logp)
    np.testing.assert_allclose(float(loss32), want_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad32), want_grad, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(grad32)[mask == 0] == 0)


def test_reference_gradient_is_the_derivative_of_the_reference_loss():
    logp, old, ref, adv, mask = _random_inputs(7)
    args = ("seq_mean", 0.2, 0.28, 0.04, 3.0)
    _, grad = grpo_loss_np(logp, old, ref, adv, mask, *args)
    h = 1e-6
    for b, t in [(0, 1), (1, 4), (3, 7), (5, 0)]:
        lp1, lp2 = logp.copy(), logp.copy()
        lp1[b, t] += h
        lp2[b, t] -= h
        up = grpo_loss_np(lp1, old, ref, adv, mask, *args)[0]
        down = grpo_loss_np(lp2, old, ref, adv, mask, *args)[0]
        fd = up - down
        np.testing.assert_allclose(fd / (2 * h), grad[b, t], rtol=1e-5, atol=1e-9)


def test_kl_is_zero_when_policy_equals_reference():
    logp, old, _, adv, mask = _random_inputs(3)
    cfg = GRPOConfig(beta=0.1)
    _, terms = grpo_loss(*(jnp.asarray(x, jnp.float32) for x in (logp, old, logp, adv, mask)), cfg)
    assert float(jnp.abs(terms["kl"]).max()) == 0.0
    # and with policy == old == ref the loss is -Σ w·A, the pure policy-gradient surrogate at r = 1
    loss, _ = grpo_loss(*(jnp.asarray(x, jnp.float32) for x in (logp, logp, logp, adv, mask)), cfg)
    w = mask / mask.sum()
    np.testing.assert_allclose(float(loss), -(w * adv[:, None]).sum(), rtol=1e-6)


def test_truncated_completions_are_masked_out():
    logp, old, ref, adv, mask = _random_inputs(5)
    trunc = np.array([0, 1, 0, 0, 1, 0], np.float32)
    cfg = GRPOConfig()
    m = np.asarray(effective_mask(jnp.asarray(mask), jnp.asarray(trunc), cfg))
    np.testing.assert_array_equal(m, mask * (1 - trunc)[:, None])
    m_off = effective_mask(jnp.asarray(mask), jnp.asarray(trunc), GRPOConfig(mask_truncated=False))
    np.testing.assert_array_equal(np.asarray(m_off), mask)
    want, _ = grpo_loss_np(logp, old, ref, adv, m, "token_mean", 0.2, 0.28, 0.0)
    got, _ = grpo_loss(*(jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv, m)), cfg)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_garbage_outside_the_mask_does_not_leak():
    logp, old, ref, adv, mask = _random_inputs(11)
    old_bad, ref_bad, adv_bad = old.copy(), ref.copy(), adv.copy()
    old_bad[mask == 0] = np.inf
    ref_bad[mask == 0] = np.nan
    adv_bad[2] = np.nan  # row 2 has no loss tokens
    cfg = GRPOConfig(beta=0.1)
    f = lambda lp, o, r, a: grpo_loss(lp, o, r, a, jnp.asarray(mask, jnp.float32), cfg)[0]
    args = lambda o, r, a: tuple(jnp.asarray(x, jnp.float32) for x in (logp, o, r, a))
    loss_bad, g_bad = jax.value_and_grad(f)(*args(old_bad, ref_bad, adv_bad))
    loss, g = jax.value_and_grad(f)(*args(old, ref, adv))
    assert np.isfinite(float(loss_bad)) and np.isfinite(np.asarray(g_bad)).all()
    np.testing.assert_array_equal(np.asarray(g_bad), np.asarray(g))
    assert float(loss_bad) == float(loss)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "dr_grpo"])
def test_microbatch_split_with_global_weights_is_exact(agg):
    """What the update step does: weights from the whole batch, loss summed over row subsets."""
    from r1jax.grpo.loss import loss_weights

    logp, old, ref, adv, mask = (jnp.asarray(x, jnp.float32) for x in _random_inputs(13))
    cfg = GRPOConfig(loss_agg=agg, beta=0.04)
    full, _ = grpo_loss(logp, old, ref, adv, mask, cfg)
    w = loss_weights(mask, cfg)
    rows = [slice(i, None, 3) for i in range(3)]
    parts = [grpo_loss(logp[r], old[r], ref[r], adv[r], mask[r], cfg, w[r])[0] for r in rows]
    np.testing.assert_allclose(float(sum(parts)), float(full), rtol=1e-5)  # float32 summation order
    want, _ = grpo_loss_np(logp, old, ref, adv, mask, agg, 0.2, 0.28, 0.04)
    np.testing.assert_allclose(float(full), want, rtol=1e-5)
