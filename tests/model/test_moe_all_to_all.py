"""Expert parallelism by all_to_all token dispatch (moe_dispatch="all_to_all") on 8 CPU devices.

With capacity enough that nothing drops it equals the single-device dispatches (moe_ragged and the
dense moe_einsum), forward and gradients; with a small capacity the dropped assignments are exactly the
ones a NumPy queue per (source shard, expert shard) drops, they contribute zero, and the reported drop
fraction is the NumPy count; the whole tiny_moe model on an expert=4 mesh equals one device; and the
per-device temporaries fall with the expert axis where all_gather's do not."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import r1jax.model as M
from r1jax.model.moe import moe_all_to_all, moe_einsum, moe_expert_parallel, moe_ragged, route
from r1jax.parallel.mesh import MeshConfig, make_mesh

CFG = dataclasses.replace(M.get_variant("tiny_moe"), init_std=0.2, n_layers=2, n_mtp=0)
BATCH = P(("data", "fsdp", "expert"))


def _weights(rs, e, d, f):
    wg, wu = (jnp.asarray(rs.randn(e, d, f).astype(np.float32) * 0.2) for _ in range(2))
    return wg, wu, jnp.asarray(rs.randn(e, f, d).astype(np.float32) * 0.2)


def _close(got, ref, what):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5 * float(np.abs(ref).max()),
                               err_msg=what)


N_TOKENS = 36  # not a multiple of the 8 batch shards: padded


def _dispatch_loss(dispatch, probe, x, w_de, wg, wu, wd):
    """A scalar of the output (to compare gradients) with the router inside, so gradients reach it
    through the gates. -> (loss, (y, dropped_frac))."""
    w_nk, idx_nk, _ = route(x, w_de, jnp.zeros((CFG.n_routed_experts,)), CFG)
    out = dispatch(x, idx_nk, w_nk, wg, wu, wd)
    y, frac = out if isinstance(out, tuple) else (out, jnp.zeros(()))
    return jnp.sum(y * probe), (y, frac)


def _grad_fn(dispatch, probe):
    return jax.jit(jax.value_and_grad(lambda *a: _dispatch_loss(dispatch, probe, *a), argnums=(0, 1, 2, 3, 4),
                                      has_aux=True))


@pytest.fixture(scope="module")
def local_dispatch():
    """Inputs and the single-device results (moe_ragged and moe_einsum), shared by every mesh."""
    rs = np.random.RandomState(0)
    e, d, f = CFG.n_routed_experts, CFG.d_model, CFG.moe_mlp_dim
    args = (jnp.asarray(rs.randn(N_TOKENS, d).astype(np.float32)), jnp.asarray(rs.randn(d, e).astype(np.float32)),
            *_weights(rs, e, d, f))
    probe = jnp.asarray(rs.randn(N_TOKENS, d).astype(np.float32))
    keep_n = jnp.asarray(rs.rand(N_TOKENS) > 0.3)  # masked tokens queue last; no effect when nothing drops
    refs = {name: _grad_fn(fn, probe)(*args) for name, fn in (("ragged", moe_ragged), ("einsum", moe_einsum))}
    return args, probe, keep_n, refs


@pytest.mark.parametrize("axes", [dict(data=2, fsdp=2, expert=2), dict(fsdp=2, expert=4), dict(fsdp=1, expert=8)])
def test_all_to_all_equals_local_dispatch(local_dispatch, axes):
    args, probe, keep_n, refs = local_dispatch
    mesh = make_mesh(MeshConfig(**axes))
    with jax.set_mesh(mesh):
        # capacity factor = expert shards: a buffer holds every assignment a shard has, nothing drops
        a2a = lambda *a: moe_all_to_all(*a, mesh=jax.sharding.get_abstract_mesh(),  # noqa: E731
                                        capacity_factor=float(axes["expert"]), keep_n=keep_n)
        lowered = _grad_fn(a2a, probe).lower(*args)
        assert "all_to_all" in lowered.as_text()
        (_, (y, frac)), grads = lowered.compile()(*args)
    assert float(frac) == 0.0
    for name, ((_, (y_ref, _)), grads_ref) in refs.items():
        _close(y, y_ref, f"output vs {name}")
        for what, g, g_ref in zip(("x", "router", "w_gate", "w_up", "w_down"), grads, grads_ref):
            _close(g, g_ref, f"gradient wrt {what} vs {name}")


def _numpy_dispatch(x, idx, gates, keep, wg, wu, wd, n_blocks, n_shards, capacity):
    """float64 reference of a capacity-bounded dispatch: tokens in n_blocks contiguous source blocks
    (the batch split; block b sits on expert shard b % n_shards); per (block, destination shard) the
    assignments queue as (kept tokens first, token, slot) and the first `capacity` run.
    -> y [N, d], kept mask [N, K], dropped count, counted total (kept-token assignments)."""
    n, k = idx.shape
    e_local = wg.shape[0] // n_shards
    n_loc = n // n_blocks
    sent = np.zeros((n, k), bool)
    for b in range(n_blocks):
        rows = range(b * n_loc, (b + 1) * n_loc)
        for dest in range(n_shards):
            queue = sorted((not keep[t], t, j) for t in rows for j in range(k) if idx[t, j] // e_local == dest)
            for _, t, j in queue[:capacity]:
                sent[t, j] = True
    y = np.zeros(x.shape)
    for t in range(n):
        for j in range(k):
            if sent[t, j]:
                ex = idx[t, j]
                g, u = x[t] @ wg[ex], x[t] @ wu[ex]
                y[t] += gates[t, j] * ((g / (1 + np.exp(-g)) * u) @ wd[ex])
    counted = np.repeat(keep[:, None], k, 1)
    return y, sent, int((counted & ~sent).sum()), int(counted.sum())


def test_small_capacity_drops_exactly_the_overflow():
    rs = np.random.RandomState(3)
    n_shards, n_blocks, n, k = 4, 8, 8 * 48, CFG.n_experts_per_tok
    e, d, f = CFG.n_routed_experts, CFG.d_model, CFG.moe_mlp_dim
    # skewed routing: half the assignments want shard 0's experts, so its buffers overflow
    p = np.array([0.25, 0.25] + [0.5 / (e - 2)] * (e - 2))
    idx = np.stack([rs.choice(e, k, replace=False, p=p) for _ in range(n)]).astype(np.int32)
    gates = rs.rand(n, k).astype(np.float32)
    keep = rs.rand(n) > 0.25
    x = rs.randn(n, d).astype(np.float32)
    wg, wu, wd = _weights(rs, e, d, f)
    factor = 1.0
    n_loc = n // n_blocks
    capacity = math.ceil(factor * n_loc * k / n_shards)  # 24: already a multiple of 8
    y_np, sent, dropped, total = _numpy_dispatch(x.astype(np.float64), idx, gates.astype(np.float64), keep,
                                                 *(np.asarray(w, np.float64) for w in (wg, wu, wd)),
                                                 n_blocks, n_shards, capacity)
    assert 0 < dropped < total and (~sent[~keep]).any()  # the test exercises drops, of both kinds
    probe = jnp.asarray(rs.randn(n, d).astype(np.float32))

    mesh = make_mesh(MeshConfig(fsdp=2, expert=n_shards))
    with jax.set_mesh(mesh):
        def loss(x, gates, wg, wu, wd):
            y, frac = moe_all_to_all(x, jnp.asarray(idx), gates, wg, wu, wd, jax.sharding.get_abstract_mesh(),
                                     factor, keep_n=jnp.asarray(keep))
            return jnp.sum(y * probe), (y, frac)

        (_, (y, frac)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(
            jnp.asarray(x), jnp.asarray(gates), wg, wu, wd)
    np.testing.assert_allclose(np.asarray(y), y_np, atol=1e-5 * np.abs(y_np).max())
    assert float(frac) == pytest.approx(dropped / total, abs=1e-7)
    g_gates = np.asarray(grads[1])
    assert np.all(g_gates[~sent] == 0.0) and np.all(g_gates[sent] != 0.0)  # dropped: no gradient at all
    # gradients equal the single-device dispatch with the dropped gates set to zero
    zeroed = jnp.asarray(np.where(sent, gates, 0.0).astype(np.float32))

    def ref_loss(x, gates, wg, wu, wd):
        return jnp.sum(moe_ragged(x, jnp.asarray(idx), gates, wg, wu, wd) * probe)

    ref_grads = jax.jit(jax.grad(ref_loss, argnums=(0, 1, 2, 3, 4)))(jnp.asarray(x), zeroed, wg, wu, wd)
    for what, g, g_ref in zip(("x", "gates", "w_gate", "w_up", "w_down"), grads, ref_grads):
        g_ref = np.where(sent, g_ref, 0.0) if what == "gates" else g_ref
        _close(g, g_ref, f"gradient wrt {what}")


def test_transformer_all_to_all_equals_single_device():
    # one MoE block keeps the 8-device compile short; capacity factor 4 = expert shards: nothing drops
    cfg = dataclasses.replace(CFG, n_layers=1, first_k_dense=0, moe_dispatch="all_to_all", moe_capacity_factor=4.0)
    mesh = make_mesh(MeshConfig(fsdp=2, expert=4))
    graphdef, state = M.create_sharded(cfg, mesh, rng_seed=7)
    single = jax.tree.map(np.asarray, state)  # the same values, on no mesh (one device)
    b, t = 8, 8
    rs = np.random.RandomState(0)
    tokens = jnp.asarray(rs.randint(0, cfg.vocab_size, (b, t)))
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))

    def loss(params, rest, tokens, positions):
        state = nnx.merge_state(params, rest)
        hidden, _, aux = M.apply(graphdef, state, tokens, positions)
        logits = nnx.merge(graphdef, state).logits(hidden)[:, :-1].astype(jnp.float32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)
        return jnp.mean(nll) + aux.aux_loss

    def value_and_grad(state, tokens, positions):
        params, rest = nnx.split_state(state, nnx.Param, ...)
        return jax.value_and_grad(loss)(params, rest, tokens, positions)

    ref_loss, ref_grads = jax.jit(value_and_grad)(single, tokens, positions)  # one device, no mesh
    batch = NamedSharding(mesh, BATCH)
    with jax.set_mesh(mesh):
        inputs = (state, jax.device_put(tokens, batch), jax.device_put(positions, batch))
        lowered = jax.jit(value_and_grad).lower(*inputs)
        assert "all_to_all" in lowered.as_text()
        got_loss, grads = lowered.compile()(*inputs)
    np.testing.assert_allclose(float(got_loss), float(ref_loss), rtol=1e-5)
    n = 0
    for (path, g), (_, g_ref) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(ref_grads)):
        _close(g[...], g_ref[...], "/".join(map(str, path)))
        n += 1
    assert n > 10


def _layer_temp_bytes(dispatch, n_shards, n_tokens, e_local):
    """Compiled temporaries of one routed-expert layer's forward + backward on an expert-only mesh."""
    cfg = dataclasses.replace(CFG, n_routed_experts=e_local * n_shards, n_group=1, topk_group=1)
    mesh = make_mesh(MeshConfig(fsdp=1, expert=n_shards), devices=jax.devices()[:n_shards])
    e, d, f = cfg.n_routed_experts, cfg.d_model, cfg.moe_mlp_dim

    def loss(x, w_de, wg, wu, wd):
        w_nk, idx_nk, _ = route(x, w_de, jnp.zeros((e,)), cfg)
        am = jax.sharding.get_abstract_mesh()
        if dispatch == "all_to_all":
            y, _ = moe_all_to_all(x, idx_nk, w_nk, wg, wu, wd, am, 2.0)
        else:
            y = moe_expert_parallel(x, idx_nk, w_nk, wg, wu, wd, am)
        return jnp.sum(y ** 2)

    tok, rep, exp = (NamedSharding(mesh, s) for s in (BATCH, P(), P("expert")))
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n_tokens, d), (d, e), (e, d, f), (e, d, f), (e, f, d))]
    shardings = (tok, rep, exp, exp, exp)
    with jax.set_mesh(mesh):
        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), in_shardings=shardings, out_shardings=shardings)
        return step.lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def test_all_to_all_temporaries_fall_with_the_expert_axis():
    # Experts per shard held fixed: the CPU backend lowers ragged_dot densely (temporaries ∝ rows × local
    # experts), which would otherwise shrink both dispatches' numbers by 1/expert and hide the difference.
    # The global token count is fixed, so only the dispatch decides how the rows per device scale.
    n_tokens, e_local = 2048, 2
    temps = {(disp, s): _layer_temp_bytes(disp, s, n_tokens, e_local)
             for disp in ("all_gather", "all_to_all") for s in (2, 4, 8)}
    print({k: round(v / 2**20, 2) for k, v in temps.items()})  # MiB, for the record (pytest -s)
    a2a = [temps["all_to_all", s] for s in (2, 4, 8)]
    ag = [temps["all_gather", s] for s in (2, 4, 8)]
    assert a2a[0] > 1.6 * a2a[1] > 1.6 * 1.6 * a2a[2]  # ~1/expert: halves as the axis doubles
    assert ag[2] >= 0.9 * ag[0]  # every shard holds every token of the axis: no decrease
    assert a2a[2] < 0.4 * ag[2]


def test_model_reports_the_dropped_fraction():
    """ModelAux.dropped_frac: 0 when the capacity holds every assignment (and on the dropless local path),
    > 0 when it cannot; None for a dense model."""
    b, t = 8, 8
    tokens = jnp.asarray(np.random.RandomState(1).randint(0, CFG.vocab_size, (b, t)))
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mesh = make_mesh(MeshConfig(fsdp=2, expert=4))
    batch = NamedSharding(mesh, BATCH)
    dropped = {}
    for factor in (4.0, 0.05):
        cfg = dataclasses.replace(CFG, n_layers=2, first_k_dense=1, moe_dispatch="all_to_all",
                                  moe_capacity_factor=factor)
        graphdef, state = M.create_sharded(cfg, mesh, rng_seed=3)
        with jax.set_mesh(mesh):
            aux = jax.jit(lambda s, x, p, g=graphdef: M.apply(g, s, x, p)[2])(
                state, jax.device_put(tokens, batch), jax.device_put(positions, batch))
        dropped[factor] = float(aux.dropped_frac)
        single = jax.tree.map(np.asarray, state)  # one device: the dropless local dispatch
        assert float(M.apply(graphdef, single, tokens, positions)[2].dropped_frac) == 0.0
    assert dropped[4.0] == 0.0 and 0.0 < dropped[0.05] < 1.0, dropped
    dense = M.get_variant("tiny_dense")
    graphdef, state = M.create_sharded(dense, M.single_device_mesh() if hasattr(M, "single_device_mesh") else
                                       make_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1]))
    assert M.apply(graphdef, state, tokens % dense.vocab_size, positions)[2].dropped_frac is None
