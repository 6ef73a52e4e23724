"""The jitted update step on the real tiny model: loss == float64 NumPy on naive logits, sharded on
8 CPU devices == single device, π_old recomputation, NaN stop, batch validation, MoE bias update."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from grpo_reference import grpo_loss_np, logprobs_np

from r1jax.grpo import GRPOConfig, make_update_step, validate_batch
from r1jax.grpo.synthetic import synthetic_batch
from r1jax.model import create_sharded, get_variant
from r1jax.parallel.mesh import MeshConfig, make_mesh, single_device_mesh
from r1jax.trainer.logprobs import make_logprob_fn
from r1jax.trainer.optimizer import OptimConfig, make_optimizer
from r1jax.trainer.state import init_train_state, shard_batch, split_model_state, train_state_shardings
from r1jax.trainer.step import StepConfig, check_finite

G, N_PROMPTS, L = 4, 2, 16
CFG = GRPOConfig(group_size=G, beta=0.05, dual_clip_c=3.0)
STEP = StepConfig(logprob_chunk=5, micro_batches=1)
OPT = OptimConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10, clip_norm=1.0)


# tiny_moe without its MTP module and with one dense + one MoE layer: the same code paths, less compile
TINY_MOE = dataclasses.replace(get_variant("tiny_moe"), n_mtp=0, n_layers=2, seq_aux_alpha=0.01)


def _setup(variant, mesh, cfg, step_cfg=STEP):
    model_cfg = TINY_MOE if variant == "tiny_moe" else get_variant(variant)
    graphdef, state = create_sharded(model_cfg, single_device_mesh(), 0)
    params, rest = split_model_state(state)
    optimizer = make_optimizer(OPT, params)
    sh = train_state_shardings(params, rest, optimizer, mesh)
    params, rest = jax.device_put((params, rest), (sh.params, sh.model_state))
    ts = init_train_state(params, rest, optimizer, mesh, seed=0)
    return graphdef, ts, make_update_step(graphdef, cfg, optimizer, mesh, sh, step_cfg), sh


@pytest.fixture(scope="module")
def single():
    return _setup("tiny_dense", single_device_mesh(), CFG)


@pytest.fixture(scope="module")
def batch():
    b = synthetic_batch(1, N_PROMPTS, G, L, get_variant("tiny_dense").vocab_size)
    # every batch of this module carries sampler log-probs: one pytree structure, one compile
    return dataclasses.replace(b, sampler_logp_bl=b.old_logp_bl + 0.01)


def _np_params(state):
    return jax.tree.map(lambda x: np.asarray(x), state.params)


def test_loss_matches_numpy_on_naive_logits(single, batch):
    graphdef, ts, update, _ = single
    from flax import nnx
    model = nnx.merge(graphdef, ts.params, ts.model_state)
    pos = np.broadcast_to(np.arange(L), (G * N_PROMPTS, L))
    hidden, _, _ = model(jnp.asarray(batch.tokens_bl), jnp.asarray(pos))
    w = np.asarray(model.unembed_weight())
    logp_next, _, _ = logprobs_np(np.asarray(hidden)[:, :-1], w, batch.tokens_bl[:, 1:])
    logp = np.pad(logp_next, ((0, 0), (1, 0)))
    mask = batch.completion_mask_bl * (1 - batch.truncated_b)[:, None]
    want, _ = grpo_loss_np(logp, batch.old_logp_bl, batch.ref_logp_bl, batch.advantages_b, mask,
                           "token_mean", CFG.eps_low, CFG.eps_high, CFG.beta, CFG.dual_clip_c)
    # the update donates its state: run it on a copy
    ts_copy = jax.tree.map(jnp.copy, ts)
    _, metrics = update(ts_copy, shard_batch(batch, single_device_mesh()))
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-4, atol=1e-6)
    assert float(metrics["tokens"]) == mask.sum()
    np.testing.assert_allclose(float(metrics["zero_var_group_frac"]), 0.5)  # group 0 is tied


def test_sharded_microbatched_update_equals_single_device(single, batch):
    """8 devices (data=2, fsdp=2, tensor=2) with 2 micro-batches vs 1 device, 1 micro-batch, 2 steps.
    Tolerance: |Δθ| <= 1e-5 = 1e-3 x lr absolute: float32 reductions run in another order, and Adam's
    m/sqrt(v) amplifies the relative error of near-zero gradient entries."""
    _, ts1, update1, _ = single
    mesh8 = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    _, ts8, update8, sh8 = _setup("tiny_dense", mesh8, CFG, dataclasses.replace(STEP, micro_batches=2))
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(ts8.params))
    ts1 = jax.tree.map(jnp.copy, ts1)
    for step in range(2):
        b = synthetic_batch(10 + step, N_PROMPTS, G, L, 256)
        b = dataclasses.replace(b, sampler_logp_bl=b.old_logp_bl)
        ts1, m1 = update1(ts1, shard_batch(b, single_device_mesh()))
        ts8, m8 = update8(ts8, shard_batch(b, mesh8))
        np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    p1, p8 = _np_params(ts1), _np_params(ts8)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), p1, _np_params(single[1])))
    assert max(moved) > 1e-3  # the step really changed the parameters
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), p1, p8)
    assert int(ts8.step) == 2


def test_recomputed_old_logp_gives_unit_ratio_and_mismatch_metric(single, batch):
    graphdef, ts, update, sh = single
    mesh = single_device_mesh()
    logprob_fn = make_logprob_fn(graphdef, mesh, STEP.logprob_chunk, sh.params, sh.model_state)
    tokens, cmask = jnp.asarray(batch.tokens_bl), jnp.asarray(batch.completion_mask_bl)
    old = logprob_fn(ts.params, ts.model_state, tokens, cmask)
    assert float(jnp.abs(jnp.where(batch.completion_mask_bl > 0, 0.0, old)).max()) == 0.0
    b = dataclasses.replace(batch, old_logp_bl=np.asarray(old), ref_logp_bl=np.asarray(old),
                            sampler_logp_bl=batch.old_logp_bl)
    validate_batch(b, G)
    _, m = update(jax.tree.map(jnp.copy, ts), shard_batch(b, mesh))
    assert float(m["policy_vs_old_abs"]) < 1e-5
    assert float(m["clip_frac_low"]) == 0.0 and float(m["clip_frac_high"]) == 0.0
    assert abs(float(m["kl"])) < 1e-6
    in_loss = b.completion_mask_bl * (1 - b.truncated_b)[:, None] > 0
    want = np.abs(np.asarray(old) - batch.old_logp_bl)[in_loss].mean()
    np.testing.assert_allclose(float(m["old_vs_sampler_abs"]), want, rtol=1e-5)


def test_nonfinite_loss_stops_with_step_number_and_keeps_state(single, batch):
    _, ts, update, _ = single
    ts = jax.tree.map(jnp.copy, ts)
    before = _np_params(ts)
    adv = np.array(batch.advantages_b)
    in_loss_b = (batch.completion_mask_bl.sum(-1) > 0) & (batch.truncated_b == 0)
    adv[np.flatnonzero(in_loss_b)[-1]] = np.nan  # a device-side NaN the host validation cannot see
    bad = dataclasses.replace(batch, advantages_b=jnp.asarray(adv))
    ts, m = update(ts, shard_batch(bad, single_device_mesh()))
    assert float(m["skipped_nonfinite"]) == 1.0
    with pytest.raises(FloatingPointError, match="step 7: loss is nan"):
        check_finite(m, step=7)
    assert float(m["skipped_nonfinite"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, _np_params(ts), before)


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("tokens_bl", lambda b: b.tokens_bl.astype(np.int64), "tokens_bl must be int32"),
        ("completion_mask_bl", lambda b: b.completion_mask_bl[:, :-1], "completion_mask_bl must have shape"),
        ("advantages_b", lambda b: b.advantages_b.astype(np.float64), "advantages_b must be float32"),
        ("old_logp_bl", lambda b: np.where(b.completion_mask_bl > 0, np.inf, 0).astype(np.float32),
         "old_logp_bl has non-finite"),
        ("ref_logp_bl", lambda b: None, "ref_logp_bl is missing"),
        ("truncated_b", lambda b: np.zeros(3, np.float32), "truncated_b must have shape"),
    ],
)
def test_bad_batch_names_the_field(batch, field, value, msg):
    with pytest.raises(ValueError, match=msg):
        validate_batch(dataclasses.replace(batch, **{field: value(batch)}), G)


def test_batch_not_whole_groups_or_microbatches():
    b = synthetic_batch(0, 3, 2, 8, 50)
    with pytest.raises(ValueError, match="group_size 4"):
        validate_batch(b, 4)
    with pytest.raises(ValueError, match="micro_batches 4"):
        validate_batch(b, 2, micro_batches=4)


def test_moe_step_updates_router_bias_and_adds_aux_loss():
    mesh = make_mesh(MeshConfig(fsdp=2, expert=4))
    cfg = dataclasses.replace(CFG, beta=0.0)
    graphdef, ts, update, _ = _setup("tiny_moe", mesh, cfg, dataclasses.replace(STEP, router_bias_rate=0.01))
    bias0 = [np.asarray(x) for x in jax.tree.leaves(ts.model_state)]
    b = synthetic_batch(3, N_PROMPTS, G, L, get_variant("tiny_moe").vocab_size)
    # the GRPO part of the loss from a forward of the same parameters, to isolate the balance loss
    logp_fn = make_logprob_fn(graphdef, mesh, 8)
    tokens, cmask = jnp.asarray(b.tokens_bl), jnp.asarray(b.completion_mask_bl)
    logp = np.asarray(logp_fn(ts.params, ts.model_state, tokens, cmask))
    mask = b.completion_mask_bl * (1 - b.truncated_b)[:, None]
    pg, _ = grpo_loss_np(logp, b.old_logp_bl, b.ref_logp_bl, b.advantages_b, mask, "token_mean",
                         cfg.eps_low, cfg.eps_high, 0.0, cfg.dual_clip_c)
    ts, m = update(ts, shard_batch(b, mesh))
    check_finite(m, 0)
    assert float(m["aux_loss"]) > 0
    np.testing.assert_allclose(float(m["loss"]), pg + float(m["aux_loss"]), rtol=1e-4)
    bias1 = [np.asarray(x) for x in jax.tree.leaves(ts.model_state)]
    assert len(bias0) == TINY_MOE.n_moe_layers == 1
    # sign updates of size rate: every entry moved by 0 or ±0.01, and some moved
    deltas = np.concatenate([(b1 - b0).ravel() for b0, b1 in zip(bias0, bias1)])
    assert np.all(np.isclose(np.abs(deltas), 0.0) | np.isclose(np.abs(deltas), 0.01))
    assert np.abs(deltas).max() > 0
    assert float(m["expert_load_max"]) >= 1.0


def test_update_validates_before_running(single, batch):
    _, ts, update, _ = single
    bad = dataclasses.replace(batch, old_logp_bl=batch.old_logp_bl[:, :5])
    with pytest.raises(ValueError, match="old_logp_bl must have shape"):
        update(ts, bad)
