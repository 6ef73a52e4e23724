"""The jitted update step (make_update_step) with each loss variant beyond vanilla GRPO on the real
tiny model: it runs, is finite, its loss and IS / clip metrics equal the float64 NumPy reference on
naive logits, and 8 devices with 2 micro-batches equal 1 device."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from grpo_reference import grpo_is_loss_np, gspo_loss_np, is_weights_np, logprobs_np

from r1jax.grpo import GRPOConfig, make_update_step
from r1jax.grpo.synthetic import synthetic_batch
from r1jax.model import create_sharded, get_variant
from r1jax.parallel.mesh import MeshConfig, make_mesh, single_device_mesh
from r1jax.trainer.state import init_train_state, shard_batch, split_model_state, train_state_shardings
from r1jax.trainer.step import StepConfig, check_finite

G, N_PROMPTS, L = 4, 2, 16
STEP = StepConfig(logprob_chunk=5, micro_batches=1)
# plain SGD with lr 1: the parameter change of a step is minus the gradient itself, so 8 devices vs 1
# compares gradients entry by entry (Adam's m/sqrt(v) would turn float32 noise on near-zero entries
# into steps of size lr)
OPTIMIZER = optax.sgd(1.0)
MODEL = get_variant("tiny_dense")
GSPO = dict(ratio_level="sequence", loss_agg="seq_mean", eps_low=3e-4, eps_high=4e-4)  # the paper's ε

VARIANTS = {
    "tis_token": GRPOConfig(group_size=G, beta=0.05, is_correction="tis_token"),
    "tis_seq": GRPOConfig(group_size=G, beta=0.05, is_correction="tis_seq", is_cap=1.5),
    "mis_token": GRPOConfig(group_size=G, beta=0.05, is_correction="mis_token", loss_agg="seq_mean"),
    "mis_seq": GRPOConfig(group_size=G, is_correction="mis_seq", is_cap=1.5, dual_clip_c=3.0),
    "gspo": GRPOConfig(group_size=G, beta=0.05, **GSPO),
    "gspo_tis_token": GRPOConfig(group_size=G, beta=0.05, dual_clip_c=3.0, is_correction="tis_token", **GSPO),
}


def _setup(mesh, cfg, step_cfg=STEP):
    graphdef, state = create_sharded(MODEL, single_device_mesh(), 0)
    params, rest = split_model_state(state)
    sh = train_state_shardings(params, rest, OPTIMIZER, mesh)
    params, rest = jax.device_put((params, rest), (sh.params, sh.model_state))
    ts = init_train_state(params, rest, OPTIMIZER, mesh, seed=0)
    return graphdef, ts, make_update_step(graphdef, cfg, OPTIMIZER, mesh, sh, step_cfg)


@pytest.fixture(scope="module")
def data():
    """A batch whose π_old is near the model's own log-probs (ratios near 1, as after a real
    recomputation), with a sampler off by ~0.4 nats per token and by 1e6 / 1e-6 at a few tokens."""
    graphdef, ts, _ = _setup(single_device_mesh(), VARIANTS["gspo"])
    model = nnx.merge(graphdef, ts.params, ts.model_state)
    b = synthetic_batch(1, N_PROMPTS, G, L, MODEL.vocab_size)
    pos = np.broadcast_to(np.arange(L), (G * N_PROMPTS, L))
    hidden, _, _ = model(jnp.asarray(b.tokens_bl), jnp.asarray(pos))
    logp_next, _, _ = logprobs_np(np.asarray(hidden)[:, :-1], np.asarray(model.unembed_weight()), b.tokens_bl[:, 1:])
    logp = np.pad(logp_next, ((0, 0), (1, 0)))  # float64, entry t = log p(token t | < t)
    rng = np.random.default_rng(2)
    cmask = b.completion_mask_bl > 0
    old = logp + rng.normal(0, 0.1, logp.shape)
    sampler = old - rng.normal(0, 0.4, logp.shape)
    rows = np.flatnonzero(cmask.any(1))
    for row, log_rho in zip(rows[:2], (np.log(1e6), np.log(1e-6))):
        sampler[row, np.flatnonzero(cmask[row])[0]] = old[row, np.flatnonzero(cmask[row])[0]] - log_rho
    z = lambda x: np.where(cmask, x, 0.0).astype(np.float32)
    b = dataclasses.replace(b, old_logp_bl=z(old), ref_logp_bl=z(old + rng.normal(0, 0.3, logp.shape)),
                            sampler_logp_bl=z(sampler))
    return b, logp


def _reference(cfg, b, logp):
    mask = b.completion_mask_bl * (1 - b.truncated_b)[:, None]
    old, sampler = (np.asarray(x, np.float64) for x in (b.old_logp_bl, b.sampler_logp_bl))
    is_w = np.ones(mask.shape) if cfg.is_correction == "none" else is_weights_np(old, sampler, mask,
                                                                                 cfg.is_correction, cfg.is_cap)
    if cfg.ratio_level == "sequence":
        loss, _ = gspo_loss_np(logp, old, b.ref_logp_bl, b.advantages_b, mask, cfg.eps_low, cfg.eps_high, cfg.beta,
                               cfg.dual_clip_c, is_w)
    else:
        loss, _ = grpo_is_loss_np(logp, old, b.ref_logp_bl, b.advantages_b, mask, is_w, cfg.loss_agg, cfg.eps_low,
                                  cfg.eps_high, cfg.beta, cfg.dual_clip_c)
    return loss, mask, old, sampler


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_update_matches_numpy_and_8_devices_equal_1(name, data):
    """1 device: loss and metrics vs the reference. 8 devices (data=2, fsdp=2, tensor=2) with 2
    micro-batches vs 1 device with 1, two SGD steps (μ = 2 on one batch, the second with ratios != 1):
    same loss, metrics and grad norm to 1e-5 relative, and the same gradient entry by entry (each
    step's parameter change) to 1e-4 relative + 1e-5 of the largest entry (float32 reductions in
    another order)."""
    cfg = VARIANTS[name]
    b, logp = data
    _, ts1, update1 = _setup(single_device_mesh(), cfg)
    start = jax.tree.map(np.asarray, ts1.params)
    mesh8 = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    _, ts8, update8 = _setup(mesh8, cfg, dataclasses.replace(STEP, micro_batches=2))
    for step in range(2):
        ts1, m1 = update1(ts1, shard_batch(b, single_device_mesh()))
        ts8, m8 = update8(ts8, shard_batch(b, mesh8))
        check_finite(m1, step)
        assert all(np.isfinite(float(v)) for v in m1.values()), m1
        assert float(m1["skipped_nonfinite"]) == 0.0
        if step == 0:
            _check_first_step_metrics(cfg, b, logp, m1)
        np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
        for key in [k for k in m1 if k.startswith(("is_", "clip_frac"))]:
            np.testing.assert_allclose(float(m8[key]), float(m1[key]), rtol=1e-5, err_msg=key)
        p1, p8 = (jax.tree.map(np.asarray, t.params) for t in (ts1, ts8))
        d1, d8 = (jax.tree.map(np.subtract, p, start) for p in (p1, p8))
        scale = max(np.abs(x).max() for x in jax.tree.leaves(d1))
        assert scale > 1e-3  # the variant's gradient really moved the parameters
        jax.tree.map(lambda a, c, tol=1e-5 * scale: np.testing.assert_allclose(c, a, rtol=1e-4, atol=tol), d1, d8)
        start = p1


def _check_first_step_metrics(cfg, b, logp, m):
    want, mask, old, sampler = _reference(cfg, b, logp)
    np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-4, atol=1e-6)
    in_loss = mask > 0
    if cfg.is_correction != "none":
        log_rho = np.where(in_loss, old - sampler, 0.0)
        if cfg.is_correction.endswith("_seq"):
            log_rho = np.repeat(log_rho.sum(1, keepdims=True) / np.maximum(in_loss.sum(1, keepdims=True), 1), L, 1)
        rho = np.exp(log_rho)[in_loss]
        tis = cfg.is_correction.startswith("tis")
        capped = (rho > cfg.is_cap).mean() if tis else 0.0
        masked = 0.0 if tis else ((rho < 1 / cfg.is_cap) | (rho > cfg.is_cap)).mean()
        w = np.minimum(rho, cfg.is_cap) if tis else np.where((rho < 1 / cfg.is_cap) | (rho > cfg.is_cap), 0, 1)
        assert capped + masked > 0, "the batch reaches the cap"
        np.testing.assert_allclose(float(m["is_capped_frac"]), capped, rtol=1e-6)
        np.testing.assert_allclose(float(m["is_masked_frac"]), masked, rtol=1e-6)
        np.testing.assert_allclose(float(m["is_ratio_mean"]), rho.mean(), rtol=1e-5)
        np.testing.assert_allclose(float(m["is_weight_mean"]), w.mean(), rtol=1e-5)
    else:
        assert not [k for k in m if k.startswith("is_")]
    if cfg.ratio_level == "sequence":  # clip fractions are shares of sequences for GSPO
        seq = in_loss.any(1)
        s = np.exp(np.where(in_loss, logp - old, 0).sum(1) / np.maximum(in_loss.sum(1), 1))
        adv = b.advantages_b
        np.testing.assert_allclose(float(m["clip_frac_low"]), ((s < 1 - cfg.eps_low) & (adv < 0))[seq].mean())
        np.testing.assert_allclose(float(m["clip_frac_high"]), ((s > 1 + cfg.eps_high) & (adv > 0))[seq].mean())
        assert 0 < float(m["clip_frac_low"]) + float(m["clip_frac_high"]) < 1


def test_is_correction_without_sampler_logp_stops_before_running(data):
    b, _ = data
    _, ts, update = _setup(single_device_mesh(), VARIANTS["tis_token"])
    with pytest.raises(ValueError, match="sampler_logp_bl is missing"):
        update(ts, dataclasses.replace(b, sampler_logp_bl=None))
