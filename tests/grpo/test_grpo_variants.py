"""RL beyond vanilla GRPO, against the float64 NumPy reference (grpo_reference.py, written from the
papers with loops): sampler/trainer importance-sampling correction (TIS / MIS, token and sequence
level), GSPO's sequence ratio, and the config checks. Loss value and gradient, extreme ratios
(1e-6, 1e6), fully masked rows, zero-advantage rows, micro-batch accumulation with whole-batch weights."""

import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from grpo_reference import (
    grpo_is_loss_np,
    grpo_loss_np,
    gspo_loss_np,
    gspo_sequence_objective_np,
    is_weights_np,
)

from r1jax.grpo import GRPOConfig, TrainBatch, validate_batch
from r1jax.grpo.loss import grpo_loss, is_weights, loss_weights

IS_MODES = ["tis_token", "tis_seq", "mis_token", "mis_seq"]
B, L = 10, 9


def _inputs(seed):
    """Ratios of every size: random ones, plus the extremes 1e-6 and 1e6 for the policy ratio π/π_old
    (tokens and whole sequences) and for the IS ratio π_old/π_sampler (tokens and whole sequences)."""
    rng = np.random.default_rng(seed)
    old = rng.normal(-2.0, 1.0, (B, L))
    logp = old + rng.uniform(-3, 3, (B, L)) * (rng.random((B, L)) > 0.3)
    ref = logp + rng.normal(0, 0.5, (B, L))
    sampler = old - rng.normal(0, 0.6, (B, L))  # |log ρ| ~ 0.6: some inside [1/2, 2], some outside
    adv = rng.normal(size=B)
    mask = (rng.random((B, L)) > 0.25).astype(np.float64)
    mask[2] = 0.0  # a fully masked row
    adv[3] = 0.0  # a row with zero advantage
    mask[0, :3] = mask[1, :2] = 1.0
    sampler[0, :3] = old[0, :3] - np.log([1e6, 1e-6, 1e6])  # token IS ratios 1e6, 1e-6
    logp[1, :2] = old[1, :2] + np.log([1e6, 1e-6])  # token policy ratios 1e6, 1e-6
    sampler[4] = old[4] - np.log(1e6)  # sequence IS ratio 1e6
    sampler[5] = old[5] - np.log(1e-6)  # sequence IS ratio 1e-6
    logp[6] = old[6] + np.log(1e6)  # GSPO sequence ratio 1e6
    logp[7] = old[7] - np.log(1e6)  # GSPO sequence ratio 1e-6
    adv[6], adv[7] = -abs(adv[6]), abs(adv[7])  # on the unclipped side: the extreme ratio reaches the loss
    return logp, old, ref, adv, mask, sampler


def _seed(variant: dict) -> int:
    return zlib.crc32(repr(variant).encode()) % 1000  # not hash(): str hashes change with PYTHONHASHSEED


def _reference(cfg, logp, old, ref, adv, mask, sampler):
    is_w = (np.ones(mask.shape) if cfg.is_correction == "none"
            else is_weights_np(old, sampler, mask, cfg.is_correction, cfg.is_cap))
    if cfg.ratio_level == "sequence":
        return gspo_loss_np(logp, old, ref, adv, mask, cfg.eps_low, cfg.eps_high, cfg.beta, cfg.dual_clip_c, is_w)
    return grpo_is_loss_np(logp, old, ref, adv, mask, is_w, cfg.loss_agg, cfg.eps_low, cfg.eps_high, cfg.beta,
                           cfg.dual_clip_c, cfg.max_completion_len)


def _check_against_reference(cfg, inputs):
    logp, old, ref, adv, mask, sampler = inputs
    want_loss, want_grad = _reference(cfg, *inputs)
    assert np.isfinite(want_loss) and np.isfinite(want_grad).all()

    def f(lp, dtype):
        o, r, a, m, s = (jnp.asarray(x, dtype) for x in (old, ref, adv, mask, sampler))
        return grpo_loss(lp, o, r, a, m, cfg, sampler_logp_bl=s)[0]

    with jax.enable_x64(True):
        loss64, grad64 = jax.value_and_grad(lambda lp: f(lp, jnp.float64))(jnp.asarray(logp, jnp.float64))
    np.testing.assert_allclose(float(loss64), want_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad64), want_grad, rtol=1e-5, atol=1e-9)
    loss32, grad32 = jax.value_and_grad(lambda lp: f(lp, jnp.float32))(jnp.asarray(logp, jnp.float32))
    np.testing.assert_allclose(float(loss32), want_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad32), want_grad, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(grad32)[mask == 0] == 0)
    assert np.all(np.asarray(grad32)[2] == 0)  # the fully masked row
    return want_loss, want_grad


IS_VARIANTS = [
    dict(is_correction=mode, loss_agg=agg, beta=beta, dual_clip_c=dual, is_cap=cap)
    for mode, agg, (beta, dual), cap in itertools.product(
        IS_MODES, ["token_mean", "seq_mean", "dr_grpo"], [(0.0, None), (0.04, 3.0)], [2.0, 5.0])
]


@pytest.mark.parametrize("variant", IS_VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_is_correction_loss_and_grad_match_numpy(variant):
    cfg = GRPOConfig(**variant)
    inputs = _inputs(_seed(variant))
    _check_against_reference(cfg, inputs)
    # the extremes did what the variant says: ρ = 1e6 is capped at C (TIS) or dropped (MIS)
    logp, old, ref, adv, mask, sampler = inputs
    w = is_weights_np(old, sampler, mask, cfg.is_correction, cfg.is_cap)
    if cfg.is_correction == "tis_token":
        np.testing.assert_allclose(w[0, :3], [cfg.is_cap, 1e-6, cfg.is_cap], rtol=1e-9)
    elif cfg.is_correction == "mis_token":
        assert np.all(w[0, :3] == 0)
    elif cfg.is_correction == "tis_seq":
        assert np.all(w[4][mask[4] > 0] == cfg.is_cap) and np.allclose(w[5][mask[5] > 0], 1e-6, rtol=1e-9)
    else:
        assert np.all(w[4:6] == 0)


GSPO_VARIANTS = [
    dict(ratio_level="sequence", loss_agg="seq_mean", is_correction=mode, eps_low=el, eps_high=eh, beta=beta,
         dual_clip_c=dual)
    for mode, (el, eh), (beta, dual) in itertools.product(
        ["none", *IS_MODES], [(3e-4, 4e-4), (0.2, 0.28)], [(0.0, None), (0.04, 3.0)])
]


@pytest.mark.parametrize("variant", GSPO_VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_gspo_loss_and_grad_match_numpy(variant):
    _check_against_reference(GRPOConfig(**variant), _inputs(_seed(variant)))


def test_gspo_reference_is_the_papers_sequence_objective():
    """The reference's GSPO-token gradient (w = 1, β = 0) is the derivative of the paper's sequence-level
    objective (finite differences), and both have the same value; so the JAX code, matched to the
    reference above, differentiates GSPO itself."""
    logp, old, ref, adv, mask, _ = _inputs(21)
    logp[6], logp[7] = old[6] + 0.1, old[7] - 0.05  # ratios inside and at the edge of the clip range
    eps = (0.02, 0.03)
    loss, grad = gspo_loss_np(logp, old, ref, adv, mask, *eps, beta=0.0)
    np.testing.assert_allclose(gspo_sequence_objective_np(logp, old, adv, mask, *eps), loss, rtol=1e-12)
    h = 1e-6
    for b, t in [(0, 1), (1, 4), (3, 7), (5, 0), (6, 3), (7, 2), (8, 8)]:
        if mask[b, t] == 0:
            continue
        up, down = logp.copy(), logp.copy()
        up[b, t] += h
        down[b, t] -= h
        fd = (gspo_sequence_objective_np(up, old, adv, mask, *eps)
              - gspo_sequence_objective_np(down, old, adv, mask, *eps)) / (2 * h)
        np.testing.assert_allclose(fd, grad[b, t], rtol=1e-5, atol=1e-9)


def test_grpo_is_reference_reduces_to_the_vanilla_reference():
    logp, old, ref, adv, mask, _ = _inputs(4)
    args = ("seq_mean", 0.2, 0.28, 0.04, 3.0)
    want = grpo_loss_np(logp, old, ref, adv, mask, *args)
    got = grpo_is_loss_np(logp, old, ref, adv, mask, np.ones(mask.shape), *args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)


@pytest.mark.parametrize("mode", IS_MODES)
def test_unit_is_ratio_is_bit_identical_to_no_correction(mode):
    """Sampler == trainer (ρ = 1 everywhere): every IS variant gives exactly the loss and gradient of
    is_correction="none" (w = 1 exactly, 1·x == x)."""
    logp, old, ref, adv, mask, _ = (jnp.asarray(x, jnp.float32) for x in _inputs(5))
    for level, agg in (("token", "token_mean"), ("sequence", "seq_mean")):
        base = dict(ratio_level=level, loss_agg=agg, beta=0.04)
        f = lambda lp, cfg: grpo_loss(lp, old, ref, adv, mask, cfg, sampler_logp_bl=old)[0]
        want = jax.value_and_grad(f)(logp, GRPOConfig(**base))
        got = jax.value_and_grad(f)(logp, GRPOConfig(**base, is_correction=mode))
        assert float(got[0]) == float(want[0])
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))


@pytest.mark.parametrize("mode", IS_MODES)
def test_is_weight_does_not_touch_the_kl_term(mode):
    """With every advantage 0 the loss is β·KL alone: identical under every IS variant, even where
    MIS drops tokens or TIS scales them by 1e-6."""
    logp, old, ref, _, mask, sampler = (jnp.asarray(x, jnp.float32) for x in _inputs(6))
    adv = jnp.zeros(B, jnp.float32)
    f = lambda lp, cfg: grpo_loss(lp, old, ref, adv, mask, cfg, sampler_logp_bl=sampler)[0]
    want = jax.value_and_grad(f)(logp, GRPOConfig(beta=0.1))
    got = jax.value_and_grad(f)(logp, GRPOConfig(beta=0.1, is_correction=mode))
    assert float(got[0]) == float(want[0]) > 0
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))


def test_is_terms_and_fractions_match_numpy():
    logp, old, ref, adv, mask, sampler = _inputs(8)
    j = lambda x: jnp.asarray(x, jnp.float32)
    for mode in IS_MODES:
        cfg = GRPOConfig(is_correction=mode, is_cap=3.0)
        t = is_weights(j(old), j(sampler), j(mask), cfg)
        want_w = is_weights_np(old, sampler, mask, mode, 3.0)
        np.testing.assert_allclose(np.where(mask > 0, np.asarray(t["is_weight"]), 0), want_w, rtol=1e-5)
        log_rho = np.where(mask > 0, old - sampler, 0.0)
        if mode.endswith("_seq"):
            log_rho = np.repeat(log_rho.sum(1, keepdims=True) / np.maximum(mask.sum(1, keepdims=True), 1), L, 1)
        rho = np.exp(log_rho)
        in_loss = mask > 0
        capped = (rho > 3.0) if mode.startswith("tis") else np.zeros_like(rho, bool)
        masked = ((rho < 1 / 3) | (rho > 3.0)) if mode.startswith("mis") else np.zeros_like(rho, bool)
        np.testing.assert_array_equal(np.asarray(t["is_capped"])[in_loss], capped[in_loss])
        np.testing.assert_array_equal(np.asarray(t["is_masked"])[in_loss], masked[in_loss])
        assert capped[in_loss].any() or masked[in_loss].any()  # the test inputs do reach the cap
        np.testing.assert_allclose(np.asarray(t["is_ratio"])[in_loss], rho[in_loss], rtol=1e-5)


def test_gspo_clip_indicators_are_per_sequence():
    logp, old, ref, adv, mask, _ = _inputs(9)
    cfg = GRPOConfig(ratio_level="sequence", loss_agg="seq_mean", eps_low=3e-4, eps_high=4e-4)
    _, terms = grpo_loss(*(jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv, mask)), cfg)
    for b in range(B):
        toks = mask[b] > 0
        s = np.exp((logp[b] - old[b])[toks].mean()) if toks.any() else 1.0
        np.testing.assert_allclose(float(terms["seq_ratio_b"][b]), s, rtol=1e-4)
        assert float(terms["clip_low_b"][b]) == float(s < 1 - 3e-4 and adv[b] < 0)
        assert float(terms["clip_high_b"][b]) == float(s > 1 + 4e-4 and adv[b] > 0)
        # every token of the sequence carries the sequence's ratio
        np.testing.assert_allclose(np.asarray(terms["ratio"][b])[toks], s, rtol=1e-4)


MICRO_VARIANTS = [
    *[dict(is_correction=m, loss_agg=a, beta=0.04) for m in IS_MODES for a in ("token_mean", "seq_mean", "dr_grpo")],
    *[dict(ratio_level="sequence", loss_agg="seq_mean", is_correction=m, beta=0.04, eps_low=0.05, eps_high=0.08)
      for m in ["none", *IS_MODES]],
]


@pytest.mark.parametrize("variant", MICRO_VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_microbatch_split_with_global_weights_is_exact(variant):
    """What the update step does: weights from the whole batch, loss and gradient summed over row
    subsets (every 4th row). The sequence-level quantities (GSPO's s_i, the *_seq IS ratio) are means
    over one row; the normalisers (token count, number of sequences) come from the whole batch."""
    cfg = GRPOConfig(**variant)
    logp, old, ref, adv, mask, sampler = (jnp.asarray(x, jnp.float32) for x in _inputs(13))
    full = lambda lp: grpo_loss(lp, old, ref, adv, mask, cfg, sampler_logp_bl=sampler)[0]
    w = loss_weights(mask, cfg)
    rows = [np.arange(i, B, 4) for i in range(4)]

    def parts(lp):
        return sum(grpo_loss(lp[r], old[r], ref[r], adv[r], mask[r], cfg, w[r], sampler_logp_bl=sampler[r])[0]
                   for r in rows)

    loss_full, g_full = jax.value_and_grad(full)(logp)
    loss_parts, g_parts = jax.value_and_grad(parts)(logp)
    np.testing.assert_allclose(float(loss_parts), float(loss_full), rtol=1e-5)  # float32 summation order
    np.testing.assert_allclose(np.asarray(g_parts), np.asarray(g_full), rtol=1e-5, atol=1e-9)
    want, _ = _reference(cfg, *_inputs(13))
    np.testing.assert_allclose(float(loss_full), want, rtol=1e-4)


def test_missing_sampler_logp_is_an_error_not_a_silent_one():
    logp, old, ref, adv, mask, _ = (jnp.asarray(x, jnp.float32) for x in _inputs(0))
    with pytest.raises(ValueError, match="sampler_logp_bl"):
        grpo_loss(logp, old, ref, adv, mask, GRPOConfig(is_correction="tis_token"))
    tokens = np.ones((4, 5), np.int32)
    z = np.zeros((4, 5), np.float32)
    batch = TrainBatch(tokens, z + 1, np.zeros(4, np.float32), z, z)
    validate_batch(batch, 2)
    with pytest.raises(ValueError, match="sampler_logp_bl is missing"):
        validate_batch(batch, 2, require_sampler_logp=True)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(is_correction="tis"), "is_correction must be one of"),
    (dict(is_cap=1.0), "is_cap must be > 1"),
    (dict(ratio_level="seq"), "ratio_level must be one of"),
    (dict(ratio_level="sequence"), "needs loss_agg='seq_mean'"),
    (dict(overlong_buffer=-1), "overlong_buffer must be >= 0"),
    (dict(overlong_penalty_factor=-0.5), "overlong_penalty_factor must be >= 0"),
])
def test_config_rejects_bad_values_naming_the_field(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        GRPOConfig(**kwargs)


def test_defaults_are_vanilla():
    cfg = GRPOConfig()
    assert (cfg.is_correction, cfg.is_cap, cfg.ratio_level, cfg.overlong_buffer, cfg.overlong_penalty_factor) == (
        "none", 2.0, "token", 0, 1.0)
