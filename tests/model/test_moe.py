"""DeepSeekMoE: routing against a brute-force NumPy router, ragged dispatch against the einsum
reference, the sequence-wise aux loss against its formula, and aux-loss-free balancing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import r1jax.model as M
from r1jax.model.moe import MoE, moe_einsum, moe_ragged, route, seq_aux_loss

CFG = dataclasses.replace(M.get_variant("tiny_moe"), n_routed_experts=16, n_group=4, topk_group=2,
                          n_experts_per_tok=3, seq_aux_alpha=0.01)


def numpy_route(x, w, bias, cfg):
    """Per token, in float64: sigmoid scores, group score = sum of top-2 biased scores, keep the
    best topk_group groups, top-K biased among them; gates from unbiased scores."""
    e, g, k = cfg.n_routed_experts, cfg.n_group, cfg.n_experts_per_tok
    s = 1 / (1 + np.exp(-(x.astype(np.float64) @ w.astype(np.float64))))
    ids, gates = [], []
    for row in s:
        biased = row + bias
        group_scores = [np.sort(biased[j * e // g:(j + 1) * e // g])[-2:].sum() for j in range(g)]
        keep = np.argsort(group_scores)[-cfg.topk_group:]
        allowed = [i for i in range(e) if i // (e // g) in keep]
        chosen = sorted(allowed, key=lambda i: biased[i])[-k:]
        wts = row[chosen] / row[chosen].sum() * cfg.routed_scaling_factor
        order = np.argsort(chosen)
        ids.append(np.array(chosen)[order])
        gates.append(wts[order])
    return np.array(ids), np.array(gates), s


@pytest.fixture(scope="module")
def routed():
    rs = np.random.RandomState(0)
    n, d = 40, CFG.d_model
    x = rs.randn(n, d).astype(np.float32)
    w = rs.randn(d, CFG.n_routed_experts).astype(np.float32) * 0.3
    bias = rs.randn(CFG.n_routed_experts).astype(np.float32) * 0.2
    return x, w, bias


def test_route_matches_bruteforce_group_limited_topk(routed):
    x, w, bias = routed
    w_nk, idx_nk, scores = route(jnp.asarray(x), jnp.asarray(w), jnp.asarray(bias), CFG)
    ref_ids, ref_gates, ref_s = numpy_route(x, w, bias.astype(np.float64), CFG)
    order = np.argsort(np.asarray(idx_nk), axis=1)
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(idx_nk), order, 1), ref_ids)
    np.testing.assert_allclose(np.take_along_axis(np.asarray(w_nk), order, 1), ref_gates, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(scores), ref_s, rtol=1e-5)
    # the bias changes the selection but not the gate values' source (s, not s + b)
    _, idx_nobias, _ = route(jnp.asarray(x), jnp.asarray(w), jnp.zeros_like(jnp.asarray(bias)), CFG)
    assert (np.asarray(idx_nobias) != np.asarray(idx_nk)).any()


def test_ragged_dispatch_equals_einsum_reference(routed):
    x, w, bias = routed
    rs = np.random.RandomState(1)
    e, d, f = CFG.n_routed_experts, CFG.d_model, CFG.moe_mlp_dim
    wg, wu = (jnp.asarray(rs.randn(e, d, f).astype(np.float32) * 0.2) for _ in range(2))
    wd = jnp.asarray(rs.randn(e, f, d).astype(np.float32) * 0.2)
    w_nk, idx_nk, _ = route(jnp.asarray(x), jnp.asarray(w), jnp.asarray(bias), CFG)
    ref = np.asarray(moe_einsum(jnp.asarray(x), idx_nk, w_nk, wg, wu, wd))
    got = np.asarray(jax.jit(moe_ragged)(jnp.asarray(x), idx_nk, w_nk, wg, wu, wd))
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())
    # expert shards (as in expert parallelism) sum to the whole
    half = e // 2
    parts = [moe_ragged(jnp.asarray(x), idx_nk, w_nk, wg[s:s + half], wu[s:s + half], wd[s:s + half], s)
             for s in (0, half)]
    np.testing.assert_allclose(np.asarray(parts[0] + parts[1]), ref, atol=1e-5 * np.abs(ref).max())
    # a brute-force per-token loop in float64 (independent of both implementations)
    xs, ids, gates = x.astype(np.float64), np.asarray(idx_nk), np.asarray(w_nk, np.float64)
    wg64, wu64, wd64 = (np.asarray(a, np.float64) for a in (wg, wu, wd))
    loop = np.zeros_like(xs)
    for t in range(len(xs)):
        for j, ex in enumerate(ids[t]):
            a, u = xs[t] @ wg64[ex], xs[t] @ wu64[ex]
            loop[t] += gates[t, j] * ((a / (1 + np.exp(-a)) * u) @ wd64[ex])
    np.testing.assert_allclose(ref, loop, atol=1e-5 * np.abs(loop).max())


def test_moe_layer_ragged_equals_einsum_impl():
    x = jnp.asarray(np.random.RandomState(4).randn(2, 6, CFG.d_model).astype(np.float32))
    outs = {}
    for impl in ("ragged", "einsum"):  # same seed, same weights; jit: eager dispatch is slower here
        cfg = dataclasses.replace(CFG, init_std=0.2, moe_impl=impl)
        graphdef, state = nnx.split(MoE(cfg, rngs=nnx.Rngs(3)))
        outs[impl] = jax.jit(lambda s, x, g=graphdef: nnx.merge(g, s)(x))(state, x)
    (y_ragged, load_ragged, aux_ragged), (y_einsum, load_einsum, aux_einsum) = outs["ragged"], outs["einsum"]
    np.testing.assert_allclose(np.asarray(y_ragged), np.asarray(y_einsum), atol=1e-5 * np.abs(y_einsum).max())
    np.testing.assert_array_equal(np.asarray(load_ragged), np.asarray(load_einsum))
    assert float(aux_ragged) == pytest.approx(float(aux_einsum)) and float(aux_ragged) > 0


def test_seq_aux_loss_matches_formula(routed):
    x, w, bias = routed
    b, t = 2, 20
    mask = np.ones((b, t), bool)
    mask[1, 15:] = False
    _, idx_nk, scores = route(jnp.asarray(x), jnp.asarray(w), jnp.asarray(bias), CFG)
    got = float(seq_aux_loss(scores.reshape(b, t, -1), idx_nk.reshape(b, t, -1), jnp.asarray(mask), CFG))
    e, k = CFG.n_routed_experts, CFG.n_experts_per_tok
    ids, s = np.asarray(idx_nk).reshape(b, t, k), np.asarray(scores, np.float64).reshape(b, t, e)
    losses = []
    for r in range(b):
        tv = mask[r].sum()
        f = np.array([sum(i in ids[r, j] for j in range(t) if mask[r, j]) for i in range(e)]) * e / (k * tv)
        p = sum(s[r, j] / s[r, j].sum() for j in range(t) if mask[r, j]) / tv
        losses.append(CFG.seq_aux_alpha * (f * p).sum())
    assert got == pytest.approx(np.mean(losses), rel=1e-5)


def test_bias_update_balances_a_skewed_router():
    """Tokens share a common direction u; the router's first two experts align with it, so they win
    almost every token. Bias updates (outside the gradient) must spread the load."""
    cfg = dataclasses.replace(CFG, n_group=1, topk_group=1, n_experts_per_tok=2, n_mtp=0)
    layer = MoE(cfg, rngs=nnx.Rngs(0))
    rs = np.random.RandomState(5)
    u = rs.randn(cfg.d_model)
    u /= np.linalg.norm(u)
    x = jnp.asarray((rs.randn(512, cfg.d_model) * 0.5 + 3 * u).astype(np.float32))
    w = rs.randn(cfg.d_model, cfg.n_routed_experts) * 0.05
    w[:, :2] += 1.0 * u[:, None]
    layer.gate.kernel[...] = jnp.asarray(w, jnp.float32)

    @jax.jit
    def load_of(bias_e):
        _, idx, _ = route(x, layer.gate.kernel[...], bias_e, cfg)
        counts = jnp.zeros((cfg.n_routed_experts,)).at[idx].add(1.0)
        return counts / counts.sum()

    state = nnx.state(layer, M.RouterBias)
    imbalance = lambda load: float(load.max() / load.mean())
    before = imbalance(load_of(state["gate"]["e_score_correction_bias"][...]))
    for _ in range(300):
        load = load_of(state["gate"]["e_score_correction_bias"][...])
        state = M.update_router_bias(state, load[None], rate=1e-3)
    after = imbalance(load_of(state["gate"]["e_score_correction_bias"][...]))
    assert before > 3.0, before  # the router really is skewed
    assert after < 1.5, (before, after)
    # the bias lives in a RouterBias, not in the params the optimizer sees
    assert not any(isinstance(v, M.RouterBias) for _, v in nnx.to_flat_state(nnx.state(layer, nnx.Param)))


def test_update_router_bias_checks_layer_count():
    cfg = M.get_variant("tiny_moe")
    abstract = nnx.eval_shape(lambda: M.Transformer(cfg, rngs=nnx.Rngs(0)))  # shapes only: fast
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nnx.state(abstract, M.RouterBias))
    with pytest.raises(ValueError, match="RouterBias"):
        M.update_router_bias(state, jnp.zeros((cfg.n_moe_layers + 1, cfg.n_routed_experts)), 0.1)
    load = jnp.zeros((cfg.n_moe_layers, cfg.n_routed_experts)).at[:, 0].set(1.0)
    new = M.update_router_bias(state, load, 0.1)
    biases = [v[...] for _, v in nnx.to_flat_state(new)]
    assert len(biases) == cfg.n_moe_layers
    for b in biases:  # overloaded expert 0 goes down, the idle ones go up
        assert float(b[0]) == pytest.approx(-0.1) and np.allclose(np.asarray(b[1:]), 0.1)
