"""cfg.scan_layers (model/scan.py): the scanned layout is the unrolled model with its blocks' parameters
stacked. Against the unrolled model as the reference: the same loss, gradients (mapped back through
unstack_layers) and ModelAux, with and without remat under every policy, for a dense model and for
DeepSeek-V3's dense prefix + MoE (with routing replay and MTP); cache decoding and the sampler; exact
layout conversions, through a workdir checkpoint and an HF directory; and the compiled memory that is
the point of scan + remat."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import r1jax.model as M
import r1jax.trainer.policy as policy_lib
from r1jax.checkpoint import CheckpointManager
from r1jax.model.config import REMAT_POLICIES, config_to_dict
from r1jax.model.transformer import main_moe_layers, remat_policy
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.rollout.sampler import Sampler
from r1jax.rollout.types import SamplingParams
from r1jax.trainer.config import ModelSpec, PolicySpec
from r1jax.trainer.optimizer import OptimConfig, make_optimizer
from r1jax.trainer.state import split_model_state

DENSE = dataclasses.replace(M.get_variant("tiny_dense"), n_layers=3, init_std=0.2)
# two runs of more than one layer each: layers 0-1 dense, 2-3 MoE; plus one MTP module
MOE = dataclasses.replace(M.get_variant("tiny_moe"), n_layers=4, first_k_dense=2, init_std=0.2, seq_aux_alpha=0.01)
# the case without replay: the default's runs (dense run of 1, MoE run of 2), no MTP (compile time)
MOE_NO_MTP = dataclasses.replace(M.get_variant("tiny_moe"), init_std=0.2, seq_aux_alpha=0.01, n_mtp=0)
B, T = 2, 8


def scanned(cfg, **kw):
    return dataclasses.replace(cfg, scan_layers=True, **kw)


def flat(state):
    return {path: v for path, v in nnx.to_flat_state(state)}


def assert_states_equal(a, b):
    """Same paths, Variable types, logical axes and values, bit for bit."""
    fa, fb = flat(a), flat(b)
    assert list(fa) == list(fb)
    for path in fa:
        va, vb = fa[path], fb[path]
        assert type(va) is type(vb), path
        assert va.get_metadata().get("out_sharding") == vb.get_metadata().get("out_sharding"), path
        np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]), err_msg=str(path))


def inputs(cfg, seed=0):
    rs = np.random.RandomState(seed)
    tokens = jnp.asarray(rs.randint(1, cfg.vocab_size, (B, T)))
    probe = jnp.asarray(rs.randn(max(cfg.n_mtp, 1), B, T, cfg.d_model).astype(np.float32))
    routing = np.stack([rs.choice(cfg.n_routed_experts, cfg.n_experts_per_tok, replace=False)
                        for _ in range(B * T * max(main_moe_layers(cfg), 1))]) if cfg.is_moe else None
    if routing is not None:
        routing = jnp.asarray(routing.reshape(B, T, main_moe_layers(cfg), -1).astype(np.int32))
    return tokens, jnp.broadcast_to(jnp.arange(T), (B, T)), probe, routing


def loss_and_grads(cfg, replay):
    """(loss, grads, ModelAux, jaxpr of the value_and_grad) of next-token NLL + balance loss + an MTP
    probe, for `cfg`'s layout built from seed 0 (one seed gives the same parameters in both layouts)."""
    graphdef, params, rest = nnx.split(M.Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tokens, positions, probe, routing = inputs(cfg)
    routing = routing if replay else None

    def loss(params):
        model = nnx.merge(graphdef, params, rest)
        hidden, _, aux = model(tokens, positions, routing_btlk=routing)
        logp = jax.nn.log_softmax(model.logits(hidden))[:, :-1]
        value = -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1)) + aux.aux_loss
        if aux.mtp_hidden_kbtd is not None:
            value = value + jnp.sum(aux.mtp_hidden_kbtd * probe)
        return value, aux

    traced = jax.jit(jax.value_and_grad(loss, has_aux=True)).trace(params)
    (value, aux), grads = traced.lower().compile()(params)
    return value, grads, aux, traced.jaxpr


_REFERENCE = {}


def reference(cfg, replay):
    """The unrolled model's results (computed once per configuration)."""
    key = (cfg, replay)
    if key not in _REFERENCE:
        _REFERENCE[key] = loss_and_grads(cfg, replay)[:3]
    return _REFERENCE[key]


def eqns(jaxpr):
    """Every equation of a closed jaxpr, nested ones (scan and checkpoint bodies) included."""
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        yield eqn
        for p in eqn.params.values():
            if hasattr(p, "eqns") or hasattr(getattr(p, "jaxpr", None), "eqns"):
                yield from eqns(p)


CASES = [(DENSE, False, None)] + [(DENSE, False, p) for p in REMAT_POLICIES] + [
    (MOE_NO_MTP, False, None), (MOE, True, "nothing_saveable")]


@pytest.mark.parametrize("base,replay,policy", CASES,
                         ids=[f"{'moe' if c.is_moe else 'dense'}-{'replay-' if r else ''}{p or 'no_remat'}"
                              for c, r, p in CASES])
def test_scan_equals_unrolled_loss_gradients_and_aux(base, replay, policy):
    cfg = scanned(base, remat=policy is not None, remat_policy=policy or "nothing_saveable")
    ref_value, ref_grads, ref_aux = reference(base, replay)
    value, grads, aux, jaxpr = loss_and_grads(cfg, replay)

    assert float(value) == pytest.approx(float(ref_value), rel=1e-6, abs=1e-6)
    grads = M.unstack_layers(cfg, grads)
    g, rg = flat(grads), flat(ref_grads)
    assert list(g) == list(rg)
    for path in rg:
        ref = np.asarray(rg[path][...])
        np.testing.assert_allclose(np.asarray(g[path][...]), ref, atol=2e-5 * np.abs(ref).max() + 1e-9,
                                   err_msg=str(path))
    assert all(float(np.abs(np.asarray(v[...])).max()) > 0 for p, v in g.items() if p[0] == "layers")

    np.testing.assert_allclose(np.asarray(aux.expert_load_le), np.asarray(ref_aux.expert_load_le), atol=1e-7)
    assert float(aux.aux_loss) == pytest.approx(float(ref_aux.aux_loss), rel=1e-5)
    if base.is_moe:
        assert aux.expert_load_le.shape == (base.n_moe_layers, base.n_routed_experts)
        np.testing.assert_array_equal(np.asarray(aux.routing_btlk), np.asarray(ref_aux.routing_btlk))
        np.testing.assert_array_equal(np.asarray(aux.router_choice_btlk), np.asarray(ref_aux.router_choice_btlk))
        if replay:
            np.testing.assert_array_equal(np.asarray(aux.routing_btlk), np.asarray(inputs(base)[3]))
        if base.n_mtp:
            np.testing.assert_allclose(np.asarray(aux.mtp_hidden_kbtd), np.asarray(ref_aux.mtp_hidden_kbtd),
                                       atol=1e-5 * float(np.abs(np.asarray(ref_aux.mtp_hidden_kbtd)).max()))
    else:
        assert aux.routing_btlk is None and aux.mtp_hidden_kbtd is None

    # a scan per run of identical blocks (forward, and its transpose), the checkpoint with cfg's policy in it
    found = list(eqns(jaxpr))
    assert sum(e.primitive.name == "scan" for e in found) == 2 * len(M.layer_runs(cfg)) == (4 if base.is_moe else 2)
    policies = [e.params["policy"] for e in found if e.primitive.name in ("checkpoint", "remat", "remat2")]
    if policy is None:
        assert not policies
    else:
        want = remat_policy(cfg) if policy != "offload_dots_with_no_batch_dims" else None
        assert len(policies) >= len(M.layer_runs(cfg))
        for p in policies:
            assert p is want if want is not None else "offload_dot_with_no_batch_dims" in p.__qualname__


def test_unrolled_remat_uses_the_configured_policy():
    cfg = dataclasses.replace(DENSE, remat=True, remat_policy="dots_saveable")
    *_, jaxpr = loss_and_grads(cfg, False)
    policies = [e.params["policy"] for e in eqns(jaxpr) if e.primitive.name in ("checkpoint", "remat", "remat2")]
    assert policies == [jax.checkpoint_policies.dots_saveable] * cfg.n_layers


# ----------------------------------------------------------------------------- layouts


def test_layouts_convert_exactly_and_keep_sharding_annotations():
    unrolled = nnx.state(M.Transformer(MOE, rngs=nnx.Rngs(0)))
    stacked = nnx.state(M.Transformer(scanned(MOE), rngs=nnx.Rngs(0)))
    assert [r.name for r in M.layer_runs(MOE)] == ["dense_layers", "moe_layers"]
    assert [(r.name, r.size) for r in M.layer_runs(DENSE)] == [("dense_layers", 3)]
    # one seed, one model: the scanned model's parameters are the unrolled ones stacked
    assert_states_equal(M.stack_layers(MOE, unrolled), stacked)
    assert_states_equal(M.unstack_layers(MOE, stacked), unrolled)
    assert_states_equal(M.stack_layers(MOE, stacked), stacked)  # already in that layout: unchanged
    # parts of a state (the trainer keeps params and the RouterBias part apart) convert on their own
    params, rest = split_model_state(unrolled)
    assert_states_equal(M.stack_layers(MOE, rest), split_model_state(stacked)[1])
    assert_states_equal(M.unstack_layers(MOE, M.stack_layers(MOE, params)), params)

    w = flat(stacked)[("moe_layers", "mlp", "w_gate")]
    assert w.shape == (2, MOE.n_routed_experts, MOE.d_model, MOE.moe_mlp_dim)
    assert w.get_metadata()["out_sharding"] == ("layers", "exp", "embed", "mlp")
    assert flat(stacked)[("moe_layers", "mlp", "gate", "e_score_correction_bias")].shape == (2, MOE.n_routed_experts)
    assert M.param_counts(scanned(MOE)) == M.param_counts(MOE)

    # the sharding helpers read the stacked annotations: the layer axis stays whole, the rest as before
    shardings = flat(M.state_shardings(M.abstract_model(scanned(MOE))[1], make_mesh(MeshConfig(fsdp=4, expert=2))))
    assert shardings[("moe_layers", "mlp", "w_gate")].spec == P(None, "expert", "fsdp", "tensor")
    assert shardings[("dense_layers", "mlp", "gate_proj", "kernel")].spec == P(None, "fsdp", "tensor")

    drop = [(p, v) for p, v in nnx.to_flat_state(unrolled) if p[:2] != ("layers", 3)]
    with pytest.raises(ValueError, match=r"missing for layers \[3\] of moe_layers"):
        M.stack_layers(MOE, nnx.from_flat_state(drop))


def test_router_bias_update_on_stacked_rows():
    """update_router_bias on [L_run, E] biases == on the unrolled layout, row by row in layer order."""
    unrolled = split_model_state(nnx.state(M.Transformer(MOE, rngs=nnx.Rngs(0))))[1]
    load_le = jax.nn.softmax(jnp.asarray(np.random.RandomState(3).randn(MOE.n_moe_layers, MOE.n_routed_experts)))
    want = M.update_router_bias(unrolled, load_le, 0.01)
    got = M.update_router_bias(M.stack_layers(MOE, unrolled), load_le, 0.01)
    assert_states_equal(M.unstack_layers(MOE, got), want)
    # rows in layer order, then the MTP module (the biases start at 0)
    load = np.asarray(load_le)
    bias = flat(M.unstack_layers(MOE, got))
    for row, path in enumerate([("layers", 2), ("layers", 3), ("mtp", 0, "block")]):
        np.testing.assert_array_equal(np.asarray(bias[(*path, "mlp", "gate", "e_score_correction_bias")][...]),
                                      0.01 * np.sign(load[row].mean() - load[row]).astype(np.float32))
    with pytest.raises(ValueError, match="RouterBias variables for 3 MoE layers"):
        M.update_router_bias(M.stack_layers(MOE, unrolled), load_le[:2], 0.01)


def test_frozen_layer_patterns_name_the_layout():
    params = split_model_state(nnx.state(M.Transformer(scanned(MOE), rngs=nnx.Rngs(0))))[0]
    with pytest.raises(ValueError, match="scan_layers"):
        make_optimizer(OptimConfig(frozen=(r"layers\.0\.",)), params)
    make_optimizer(OptimConfig(frozen=(r"^dense_layers\.",)), params)  # a whole run can be frozen


# ----------------------------------------------------------------------------- decoding


def test_cache_decode_under_scan_equals_full_forward():
    cfg = dataclasses.replace(M.get_variant("tiny_moe"), init_std=0.2)  # MLA; dense run of 1, MoE run of 2
    graphdef, state = nnx.split(M.Transformer(scanned(cfg), rngs=nnx.Rngs(1)))
    tokens = jnp.asarray(np.random.RandomState(0).randint(1, cfg.vocab_size, (B, T)))
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))

    @jax.jit
    def full(state):
        model = nnx.merge(graphdef, state)
        hidden, _, aux = model(tokens, positions)
        return model.logits(hidden), aux.routing_btlk

    @jax.jit
    def step(state, tok, pos, cache):
        model = nnx.merge(graphdef, state)
        h, cache, aux = model(tok, pos, cache=cache)
        return model.logits(h), cache, aux.routing_btlk

    ref, ref_routing = (np.asarray(a) for a in full(state))
    cache = nnx.merge(graphdef, state).init_cache(B, 16)
    assert len(cache) == cfg.n_layers and all(x.shape[0] == B for x in jax.tree.leaves(cache))
    logits, cache, routing = step(state, tokens[:, :5], positions[:, :5], cache)
    out, routed = [np.asarray(logits)], [np.asarray(routing)]
    for t in range(5, T):
        logits, cache, routing = step(state, tokens[:, t:t + 1], positions[:, t:t + 1], cache)
        out.append(np.asarray(logits))
        routed.append(np.asarray(routing))
    np.testing.assert_allclose(np.concatenate(out, 1), ref, atol=2e-5 * np.abs(ref).max())
    assert (np.concatenate(routed, 1) == ref_routing).mean() > 0.99  # top-K ties aside, the same experts


def test_sampler_runs_the_scanned_model_like_the_unrolled_one():
    graphdef, state = nnx.split(M.Transformer(scanned(DENSE), rngs=nnx.Rngs(1)))
    u_graphdef = nnx.split(M.Transformer(DENSE, rngs=nnx.Rngs(1)))[0]
    prompts = np.random.RandomState(0).randint(1, DENSE.vocab_size, (B, 6))
    lens = np.array([6, 3])
    sampling = SamplingParams(temperature=1.0, max_new_tokens=6, n=2)
    got = Sampler(graphdef, compaction_levels=0).generate(state, prompts, lens, sampling, jax.random.key(7))
    want = Sampler(u_graphdef, compaction_levels=0).generate(M.unstack_layers(DENSE, state), prompts, lens, sampling,
                                                             jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(got.tokens_bl), np.asarray(want.tokens_bl))
    np.testing.assert_allclose(np.asarray(got.logp_sampling_bl), np.asarray(want.logp_sampling_bl), atol=1e-4)
    assert int(np.asarray(got.completion_lens_b).sum()) > 0


# ----------------------------------------------------------------------------- checkpoints and import


def _workdir(tmp_path, name, cfg, state):
    """A stage workdir: policy.json recording cfg, and a `policy` checkpoint of `state`."""
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / policy_lib.POLICY_RECORD).write_text(json.dumps({"stage": "test", "model": config_to_dict(cfg)}))
    params, rest = split_model_state(state)
    with CheckpointManager(workdir / policy_lib.CHECKPOINT_DIR) as ckpt:
        ckpt.save(1, {"policy": {"params": params, "model_state": rest}})
    return str(workdir)


def test_workdir_and_hf_load_into_either_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(policy_lib, "load_tokenizer", lambda path: None)
    mesh = make_mesh(MeshConfig(fsdp=8))
    unrolled = nnx.state(M.Transformer(MOE, rngs=nnx.Rngs(0)))
    stacked = nnx.state(M.Transformer(scanned(MOE), rngs=nnx.Rngs(0)))
    want = {True: stacked, False: unrolled}
    for stored_scan, state in ((False, unrolled), (True, stacked)):
        workdir = _workdir(tmp_path, f"scan_{stored_scan}", scanned(MOE) if stored_scan else MOE, state)
        for scan in (False, True):
            spec = ModelSpec(overrides=(("scan_layers", scan),), keep_mtp=True)
            pol = policy_lib.load_policy(PolicySpec(source="workdir", path=workdir), spec, mesh)
            assert pol.model_cfg.scan_layers == scan
            assert_states_equal(jax.device_get(nnx.merge_state(pol.params, pol.model_state)), want[scan])
            assert_states_equal(nnx.state(nnx.merge(pol.graphdef, pol.params, pol.model_state)), nnx.merge_state(
                pol.params, pol.model_state))

    # HF: export writes the unrolled layout (unstack first); import builds it and load_policy stacks it
    from r1jax.model.hf_io import save_hf

    hf_dir = str(tmp_path / "hf")
    save_hf(hf_dir, MOE, M.unstack_layers(MOE, stacked))
    monkeypatch.setattr(policy_lib, "load_tokenizer", lambda path: None)
    spec = ModelSpec(overrides=(("scan_layers", True),), keep_mtp=True)
    pol = policy_lib.load_policy(PolicySpec(source="hf", path=hf_dir), spec, mesh)
    got = flat(jax.device_get(nnx.merge_state(pol.params, pol.model_state)))
    for path, v in nnx.to_flat_state(stacked):
        np.testing.assert_array_equal(np.asarray(got[path][...]), np.asarray(v[...]), err_msg=str(path))
    assert os.path.isfile(os.path.join(hf_dir, "config.json"))


# ----------------------------------------------------------------------------- memory


def test_scan_with_remat_keeps_far_fewer_temporaries():
    """Compiled (not run) value_and_grad of a 16-layer dense model, d=256, T=512, B=8, float32.

    Without remat the backward keeps, per layer, at least the attention scores and probabilities
    (B·H·T² = 8x the residual stream B·T·d each) and the MLP's three [B, T, 4d] activations (12x):
    >= ~28 residual-stream units per layer, ~450 for 16 layers. Scan + remat (nothing_saveable) keeps
    only each layer's input (16 units) plus one layer's forward and backward working set (a few
    dozen units): the temporaries must shrink by more than 4x."""
    base = dataclasses.replace(M.get_variant("tiny_dense"), n_layers=16, d_model=256, n_heads=4, n_kv_heads=4,
                               mlp_dim=1024)
    b, t = 8, 512
    tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def temp_bytes(cfg):
        graphdef, abstract = M.abstract_model(cfg)
        params, rest = split_model_state(abstract)

        def loss(params, tokens):
            hidden, _, _ = nnx.merge(graphdef, params, rest)(tokens, jnp.broadcast_to(jnp.arange(t), (b, t)))
            return jnp.mean(hidden**2)

        return jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

    plain = temp_bytes(base)
    remat = temp_bytes(dataclasses.replace(base, remat=True))
    scan_remat = temp_bytes(scanned(base, remat=True, remat_policy="nothing_saveable"))
    unit = b * t * base.d_model * 4
    print(f"temp bytes: unrolled {plain:,}, unrolled+remat {remat:,}, scan+remat {scan_remat:,} "
          f"({plain / scan_remat:.1f}x); residual stream {unit:,}")
    assert plain > 16 * 20 * unit  # the arithmetic above holds for the unrolled model
    assert scan_remat * 4 < plain
