"""Routing replay (R3) in the model: replaying a routing runs exactly those experts with gates from the
current scores (values and gradients against brute-force references), replaying the model's own routing
changes nothing, the MTP modules keep routing themselves, and expert parallelism gives the one-device
result. Plus router_disagreement against a per-token loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import r1jax.model as M
from r1jax.model.moe import MoE, route, router_disagreement
from r1jax.model.transformer import main_moe_layers
from r1jax.parallel.mesh import MeshConfig, make_mesh, single_device_mesh
from r1jax.trainer.logprobs import sequence_logprobs

TINY = dataclasses.replace(M.get_variant("tiny_moe"), init_std=0.2, seq_aux_alpha=0.01)
LAYER = dataclasses.replace(TINY, n_routed_experts=16, n_group=4, topk_group=2, n_experts_per_tok=3)


def random_routing(rs, shape, n_experts, k):
    """K distinct expert ids per entry, ignoring groups (replay must not care)."""
    flat = [rs.choice(n_experts, k, replace=False) for _ in range(int(np.prod(shape)))]
    return jnp.asarray(np.array(flat, np.int32).reshape(*shape, k))


def tokens_positions(cfg, b=2, t=9, seed=0):
    tokens = jnp.asarray(np.random.RandomState(seed).randint(1, cfg.vocab_size, (b, t)))
    return tokens, jnp.broadcast_to(jnp.arange(t), (b, t))


def split(cfg, seed=0):
    return nnx.split(M.Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)


def loss_fn(graphdef, tokens, positions, probe_mtp=None):
    """A scalar touching every parameter: the log-probs of the row, the balance loss and the MTP states."""

    def loss(params, rest, routing_btlk=None):
        model = nnx.merge(graphdef, params, rest)
        logp, _, aux = sequence_logprobs(model, tokens, positions, None, 4, routing_btlk)
        value = jnp.sum(logp) + aux.aux_loss
        if aux.mtp_hidden_kbtd is not None:
            value = value + jnp.sum(aux.mtp_hidden_kbtd.astype(jnp.float32) * probe_mtp)
        return value, aux

    return loss


def replace_vars(state, fn):
    """A new State with fn(path, array) -> new array or None (unchanged) applied to every variable."""
    flat = []
    for path, v in nnx.to_flat_state(state):
        new = fn(path, v[...])
        flat.append((path, v if new is None else v.replace(new)))
    return nnx.from_flat_state(flat)


def assert_trees_close(a, b, rtol=1e-5):
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)):
        scale = float(np.abs(np.asarray(y)).max()) + 1e-30
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=rtol * scale, err_msg=str(path))


# ----------------------------------------------------------------------------- the MoE layer


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("impl", ["ragged", "einsum"])
def test_layer_replay_equals_bruteforce_values_and_gradients(norm_topk_prob, impl):
    """Replayed ids: the output and the gradients w.r.t. every parameter and the input equal a dense
    brute force that builds the gate matrix from the given ids and the current sigmoid scores."""
    cfg = dataclasses.replace(LAYER, norm_topk_prob=norm_topk_prob, moe_impl=impl)
    graphdef, params, rest = nnx.split(MoE(cfg, rngs=nnx.Rngs(3)), nnx.Param, ...)
    rs = np.random.RandomState(1)
    b, t, e, k = 2, 7, cfg.n_routed_experts, cfg.n_experts_per_tok
    x = jnp.asarray(rs.randn(b, t, cfg.d_model).astype(np.float32))
    probe = jnp.asarray(rs.randn(b, t, cfg.d_model).astype(np.float32))
    routing_btk = random_routing(rs, (b, t), e, k)
    # a bias that would pick other experts: replay must ignore it
    rest["gate"]["e_score_correction_bias"][...] = jnp.asarray(rs.randn(e).astype(np.float32))

    def layer(params, x):
        out = nnx.merge(graphdef, params, rest).forward(x, None, routing_btk)
        return jnp.sum(out.y_btd * probe), out

    def brute(params, x):
        x_nd = x.reshape(-1, cfg.d_model)
        s_ne = 1.0 / (1.0 + jnp.exp(-(x_nd @ params["gate"]["kernel"][...])))
        chosen_ne = jax.nn.one_hot(routing_btk.reshape(-1, k), e).sum(1)  # 1 on the K given experts
        w_ne = s_ne * chosen_ne
        if norm_topk_prob:
            w_ne = w_ne / w_ne.sum(-1, keepdims=True)
        w_ne = w_ne * cfg.routed_scaling_factor
        wg, wu, wd = (params[n][...] for n in ("w_gate", "w_up", "w_down"))
        y_ned = jnp.einsum("nef,efd->ned", jax.nn.silu(jnp.einsum("nd,edf->nef", x_nd, wg))
                           * jnp.einsum("nd,edf->nef", x_nd, wu), wd)
        sh = params["shared_experts"]
        shared = (jax.nn.silu(x_nd @ sh["gate_proj"]["kernel"][...]) * (x_nd @ sh["up_proj"]["kernel"][...])
                  ) @ sh["down_proj"]["kernel"][...]
        y = jnp.einsum("ned,ne->nd", y_ned, w_ne) + shared
        return jnp.sum(y.reshape(x.shape) * probe)

    (value, out), grads = jax.jit(jax.value_and_grad(layer, argnums=(0, 1), has_aux=True))(params, x)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(brute, argnums=(0, 1)))(params, x)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-5)
    assert_trees_close(grads, ref_grads)
    assert float(jnp.abs(grads[0]["gate"]["kernel"][...]).max()) > 0  # the router still learns
    np.testing.assert_array_equal(np.asarray(out.routing_btk), np.asarray(routing_btk))
    # the load counts the replayed assignments; the router's own choice is reported separately
    counts = np.bincount(np.asarray(routing_btk).ravel(), minlength=e)
    np.testing.assert_allclose(np.asarray(out.expert_load_e), counts / counts.sum(), atol=1e-7)
    _, own, _ = route(x.reshape(-1, cfg.d_model), params["gate"]["kernel"][...],
                      rest["gate"]["e_score_correction_bias"][...], cfg)
    np.testing.assert_array_equal(np.asarray(out.choice_btk).reshape(-1, k), np.asarray(own))


def test_route_replay_rule():
    """route(..., idx_nk): no selection, gates = scores at the ids, normalised over K, scaled."""
    rs = np.random.RandomState(2)
    x = jnp.asarray(rs.randn(5, LAYER.d_model).astype(np.float32))
    w = jnp.asarray(rs.randn(LAYER.d_model, LAYER.n_routed_experts).astype(np.float32) * 0.3)
    idx = random_routing(rs, (5,), LAYER.n_routed_experts, LAYER.n_experts_per_tok)
    for bias in (jnp.zeros((LAYER.n_routed_experts,)), jnp.asarray(rs.randn(LAYER.n_routed_experts) * 5.0)):
        w_nk, idx_nk, s = route(x, w, bias, LAYER, idx)
        np.testing.assert_array_equal(np.asarray(idx_nk), np.asarray(idx))
        picked = np.take_along_axis(np.asarray(s), np.asarray(idx), 1)
        want = picked / picked.sum(-1, keepdims=True) * LAYER.routed_scaling_factor
        np.testing.assert_allclose(np.asarray(w_nk), want, rtol=1e-6)
    # the router's own choice replayed gives back route's gates exactly
    w_own, idx_own, _ = route(x, w, bias, LAYER)
    np.testing.assert_array_equal(np.asarray(route(x, w, bias, LAYER, idx_own)[0]), np.asarray(w_own))


# ----------------------------------------------------------------------------- the Transformer


@pytest.mark.parametrize("remat", [False, True])
def test_replaying_own_routing_is_bit_identical(remat):
    """Normal forward vs replay of its own ModelAux.routing_btlk: same outputs, same gradients."""
    cfg = dataclasses.replace(TINY, remat=remat)
    graphdef, params, rest = split(cfg)
    tokens, positions = tokens_positions(cfg)
    probe = jnp.asarray(np.random.RandomState(3).randn(cfg.n_mtp, *tokens.shape, cfg.d_model).astype(np.float32))
    grad = jax.jit(jax.value_and_grad(loss_fn(graphdef, tokens, positions, probe), has_aux=True))
    (v0, aux0), g0 = grad(params, rest)
    n_routed = main_moe_layers(cfg)
    assert n_routed == cfg.n_moe_layers - cfg.n_mtp == 2
    assert aux0.routing_btlk.shape == (*tokens.shape, n_routed, cfg.n_experts_per_tok)
    assert aux0.routing_btlk.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(aux0.router_choice_btlk), np.asarray(aux0.routing_btlk))
    (v1, aux1), g1 = grad(params, rest, aux0.routing_btlk)
    assert float(v0) == float(v1)
    for a, b in zip(jax.tree.leaves((g0, aux0)), jax.tree.leaves((g1, aux1))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_forward_without_routing_is_unchanged_and_dense_has_none():
    """No routing given: the model is the one before replay existed (the existing tests hold its
    outputs); a dense model reports no routing and refuses one."""
    cfg = M.get_variant("tiny_dense")
    graphdef, state = nnx.split(M.Transformer(cfg, rngs=nnx.Rngs(0)))
    tokens, positions = tokens_positions(cfg)
    _, _, aux = M.apply(graphdef, state, tokens, positions)
    assert aux.routing_btlk is None and aux.router_choice_btlk is None and main_moe_layers(cfg) == 0
    with pytest.raises(ValueError, match="no MoE layers"):
        M.apply(graphdef, state, tokens, positions, routing_btlk=jnp.zeros((*tokens.shape, 1, 2), jnp.int32))
    graphdef, state = nnx.split(M.Transformer(TINY, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="routing_btlk shape"):
        M.apply(graphdef, state, tokens, positions, routing_btlk=jnp.zeros((*tokens.shape, 3, 2), jnp.int32))
    with pytest.raises(ValueError, match="integer expert ids"):
        M.apply(graphdef, state, tokens, positions, routing_btlk=jnp.zeros((*tokens.shape, 2, 2)))


def test_transformer_replay_equals_bias_forced_routing():
    """Brute force for the whole model: replay a routing that is the same expert set for every token
    of a layer; the reference is the free router forced onto that set by a huge selection bias (the
    bias never enters the gates). Values and gradients w.r.t. all parameters agree, and the MTP
    module (never replayed) routes the same in both."""
    cfg = TINY
    graphdef, params, rest = split(cfg)
    tokens, positions = tokens_positions(cfg, t=10)
    probe = jnp.asarray(np.random.RandomState(4).randn(cfg.n_mtp, *tokens.shape, cfg.d_model).astype(np.float32))
    sets = [(1, 6), (2, 5)]  # per MoE layer of the main stack; each pair spans two groups (topk_group=2)
    moe_layers = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    forced = replace_vars(rest, lambda path, x: x.at[jnp.asarray(sets[moe_layers.index(path[1])])].set(100.0)
                          if path[0] == "layers" and path[-1] == "e_score_correction_bias" else None)
    routing_btlk = jnp.broadcast_to(jnp.asarray(sets, jnp.int32), (*tokens.shape, *np.shape(sets)))
    grad = jax.jit(jax.value_and_grad(loss_fn(graphdef, tokens, positions, probe), has_aux=True))
    (v_ref, aux_ref), g_ref = grad(params, forced)
    assert (np.sort(np.asarray(aux_ref.routing_btlk), -1) == np.asarray(routing_btlk)).all()  # forced
    (v, aux), g = grad(params, rest, routing_btlk)
    assert float(v) == pytest.approx(float(v_ref), rel=1e-6)
    assert_trees_close(g, g_ref)
    np.testing.assert_array_equal(np.asarray(aux.routing_btlk), np.asarray(routing_btlk))
    np.testing.assert_allclose(np.asarray(aux.expert_load_le), np.asarray(aux_ref.expert_load_le), atol=1e-7)
    np.testing.assert_allclose(np.asarray(aux.mtp_hidden_kbtd), np.asarray(aux_ref.mtp_hidden_kbtd), atol=1e-5)
    # the replayed run's own routers would have picked differently (no bias forcing them there)
    assert float(router_disagreement(aux.router_choice_btlk, routing_btlk, jnp.ones(tokens.shape))["set_frac"]) > 0.5
    # and replay really changes the model: the free forward differs
    (v_free, _), _ = grad(params, rest)
    assert abs(float(v_free) - float(v)) > 1e-3


def test_perturbed_router_disagrees_without_replay_and_not_with_it():
    """Routing taken under one router, training under a perturbed one: the free forward routes
    differently, the replayed forward runs exactly the given experts."""
    graphdef, params, rest = split(TINY)
    tokens, positions = tokens_positions(TINY, b=4, t=16)
    forward = jax.jit(lambda params, r=None: nnx.merge(graphdef, params, rest)(tokens, positions, routing_btlk=r)[2])
    taken = forward(params).routing_btlk
    rs = np.random.RandomState(5)
    noisy = replace_vars(params, lambda path, x: x + 0.1 * jnp.asarray(rs.randn(*x.shape).astype(np.float32))
                         if path[-2:] == ("gate", "kernel") else None)  # the routers only
    mask = jnp.ones(tokens.shape)
    free = router_disagreement(forward(noisy).routing_btlk, taken, mask)
    replayed = forward(noisy, taken)
    again = router_disagreement(replayed.routing_btlk, taken, mask)
    assert float(free["set_frac"]) > 0.05 and float(free["slot_frac"]) > 0
    assert float(again["set_frac"]) == 0.0 and float(again["slot_frac"]) == 0.0
    # the first MoE layer sees the same input either way: its router's own choice is the free routing
    np.testing.assert_array_equal(np.asarray(replayed.router_choice_btlk[:, :, 0]),
                                  np.asarray(forward(noisy).routing_btlk[:, :, 0]))


def test_router_disagreement_matches_a_loop():
    rs = np.random.RandomState(6)
    b, t, n_layers, e, k = 3, 5, 2, 8, 3
    a = np.asarray(random_routing(rs, (b, t, n_layers), e, k))
    other = np.asarray(random_routing(rs, (b, t, n_layers), e, k))
    keep = rs.rand(b, t, n_layers) < 0.5
    b_ = np.where(keep[..., None], a[..., ::-1], other)  # kept: the same set in another order
    mask = (rs.rand(b, t) < 0.7).astype(np.float32)
    got = router_disagreement(jnp.asarray(a), jnp.asarray(b_), jnp.asarray(mask))
    sets = slots = pairs = 0
    for i in range(b):
        for j in range(t):
            if not mask[i, j]:
                continue
            for layer in range(n_layers):
                pairs += 1
                missing = len(set(a[i, j, layer]) - set(b_[i, j, layer]))
                sets += missing > 0
                slots += missing
    assert float(got["set_frac"]) == pytest.approx(sets / pairs)
    assert float(got["slot_frac"]) == pytest.approx(slots / (pairs * k))
    assert 0 < sets < pairs
    empty = router_disagreement(jnp.asarray(a), jnp.asarray(b_), jnp.zeros((b, t)))
    assert float(empty["set_frac"]) == 0.0 and float(empty["slot_frac"]) == 0.0


# ----------------------------------------------------------------------------- expert parallelism


def test_replay_under_expert_parallelism_equals_one_device():
    """(data=2, fsdp=2, expert=2) on 8 devices: the replayed forward (shard_map dispatch) and its
    gradients equal the single-device replay."""
    assert jax.device_count() == 8
    cfg = dataclasses.replace(TINY, n_layers=2, n_mtp=0)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, expert=2, tensor=1))
    graphdef, state = M.create_sharded(cfg, mesh, rng_seed=7)
    _, single = M.create_sharded(cfg, single_device_mesh(), rng_seed=7)
    b, t = 8, 8
    tokens, positions = tokens_positions(cfg, b=b, t=t, seed=8)
    routing_btlk = random_routing(np.random.RandomState(9), (b, t, 1), cfg.n_routed_experts, cfg.n_experts_per_tok)

    def loss(params, rest, tokens, positions, routing_btlk):
        model = nnx.merge(graphdef, params, rest)
        logp, _, aux = sequence_logprobs(model, tokens, positions, None, 4, routing_btlk)
        return jnp.sum(logp) + aux.aux_loss, aux

    grad = jax.value_and_grad(loss, has_aux=True)
    params1, rest1 = nnx.split_state(single, nnx.Param, ...)
    (ref, ref_aux), ref_g = jax.jit(grad)(params1, rest1, tokens, positions, routing_btlk)
    params, rest = nnx.split_state(state, nnx.Param, ...)
    rows = NamedSharding(mesh, P(("data", "fsdp", "expert")))
    args = [jax.device_put(x, rows) for x in (tokens, positions, routing_btlk)]
    with jax.set_mesh(mesh):
        assert "shard_map" in str(jax.make_jaxpr(loss)(params, rest, *args))  # the expert-parallel path
        (value, aux), g = jax.jit(grad)(params, rest, *args)
    assert float(value) == pytest.approx(float(ref), rel=1e-5)
    np.testing.assert_array_equal(np.asarray(aux.routing_btlk), np.asarray(routing_btlk))
    np.testing.assert_array_equal(np.asarray(aux.router_choice_btlk), np.asarray(ref_aux.router_choice_btlk))
    np.testing.assert_allclose(np.asarray(aux.expert_load_le), np.asarray(ref_aux.expert_load_le), atol=1e-6)
    assert_trees_close(g, ref_g, rtol=1e-4)
