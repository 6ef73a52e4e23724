"""Blockwise (flash-style) cache-free attention, cfg.train_attention_block > 0: the same function as
dense attention, forward and gradients (its custom VJP against autodiff of a plain softmax written
here), through whole models too, with compiled memory linear instead of quadratic in the length."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import r1jax.model as M
from r1jax.model import attention as A

B, T, K, G, D = 2, 12, 2, 2, 8
SCALE = 0.4


def _reference(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt):
    """softmax attention spelled out: keys repeated per query head, mask by position and segment."""
    b, t, kk, g = q_parts[0].shape[:4]
    scores = 0.0
    for q, k in zip(q_parts, k_parts):
        q_bthd = q.astype(jnp.float32).reshape(b, t, kk * g, -1)
        k_bshd = jnp.repeat(jnp.broadcast_to(k, (b, k.shape[1], kk, k.shape[3])), g, axis=2).astype(jnp.float32)
        scores = scores + jnp.einsum("bthd,bshd->bhts", q_bthd, k_bshd)
    visible = (positions_bt[:, None, :] <= positions_bt[:, :, None]) & (
        segment_ids_bt[:, None, :] == segment_ids_bt[:, :, None])
    p = jax.nn.softmax(jnp.where(visible[:, None], scores * SCALE, -jnp.inf), axis=-1)
    v_bshd = jnp.repeat(v_bskd.astype(jnp.float32), g, axis=2)
    return jnp.einsum("bhts,bshd->bthd", p, v_bshd).reshape(b, t, kk, g, -1)


def _inputs(dtype=jnp.float32, shared_key=False):
    """GQA q/k/v (plus MLA's second part: a rope key shared by all heads when shared_key), packed:
    row 0 holds two documents then 2 padding tokens (segment 0, position 0), row 1 one document."""
    ks = jax.random.split(jax.random.key(0), 6)
    q_parts = [jax.random.normal(ks[0], (B, T, K, G, D))]
    k_parts = [jax.random.normal(ks[1], (B, T, K, D))]
    if shared_key:
        q_parts.append(jax.random.normal(ks[2], (B, T, K, G, 4)))
        k_parts.append(jax.random.normal(ks[3], (B, T, 1, 4)))
    v = jax.random.normal(ks[4], (B, T, K, D))
    segs = np.array([[1] * 4 + [2] * 6 + [0] * 2, [1] * T])
    positions = np.array([list(range(4)) + list(range(6)) + [0, 0], list(range(T))])
    cast = lambda xs: tuple(x.astype(dtype) for x in xs)  # noqa: E731
    return (cast(q_parts), cast(k_parts), v.astype(dtype), jnp.asarray(positions, jnp.int32),
            jnp.asarray(segs, jnp.int32), jax.random.normal(ks[5], (B, T, K, G, D)))


def _out_and_grads(fn, q_parts, k_parts, v, positions, segs, w):
    """(out, (dq parts, dk parts, dv)) of loss = sum(out * w), in one compiled function."""
    def run(q_parts, k_parts, v):
        out, vjp = jax.vjp(lambda *a: fn(*a, positions, segs), q_parts, k_parts, v)
        return out, vjp(w.astype(out.dtype))

    return jax.jit(run)(q_parts, k_parts, v)


def _blockwise(block):
    return lambda *a: A.blockwise_attention(*a, scale=SCALE, block=block)


def _check_grads(g_test, g_ref, rtol):
    for name, a, b in zip(["dq", "dk", "dv"], g_test, g_ref):
        for i, (x, y) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b))):
            assert x.dtype == y.dtype or y.dtype == jnp.float32
            x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
            assert np.isfinite(x).all()
            np.testing.assert_allclose(x, y, atol=rtol * np.abs(y).max(), err_msg=f"{name} part {i}")


# 4 divides T = 12, 5 does not (padded keys and queries), 32 > T (clamped to one block); the shared key
# is MLA's rope key (one key for every head)
@pytest.mark.parametrize("block,shared_key", [(4, False), (5, False), (5, True), (32, True)])
def test_blockwise_equals_reference_forward_and_grads(block, shared_key):
    q_parts, k_parts, v, positions, segs, w = _inputs(shared_key=shared_key)
    out, grads = _out_and_grads(_blockwise(block), q_parts, k_parts, v, positions, segs, w)
    ref, ref_grads = _out_and_grads(_reference, q_parts, k_parts, v, positions, segs, w)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-6)
    _check_grads(grads, ref_grads, 2e-6)
    # the comparison can fail: the packing matters (another segment's keys change the output)
    no_packing = _reference(q_parts, k_parts, v, positions, jnp.ones_like(segs))
    assert np.abs(np.asarray(no_packing - ref)).max() > 1e-2


def test_blockwise_bfloat16_matches_float32_reference():
    q_parts, k_parts, v, positions, segs, w = _inputs(jnp.bfloat16, shared_key=True)
    out, grads = _out_and_grads(_blockwise(5), q_parts, k_parts, v, positions, segs, w)
    assert out.dtype == jnp.bfloat16
    f32 = lambda xs: jax.tree.map(lambda x: x.astype(jnp.float32), xs)  # noqa: E731
    ref, ref_grads = _out_and_grads(_reference, f32(q_parts), f32(k_parts), f32(v), positions, segs, w)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=3e-2)
    _check_grads(grads, ref_grads, 3e-2)


def test_cached_attention_shared_core_and_unseeing_queries():
    """The cache path (dynamic trip count over the same block step) against the reference; a query
    that sees no slot (position -1) gets 0, not NaN."""
    q_parts, k_parts, v, _, _, _ = _inputs(shared_key=False)
    pos = jnp.asarray([[3, 7, 11], [-1, 0, 5]], jnp.int32)  # each query's position = its cache slot bound
    q3 = tuple(q[:, :3] for q in q_parts)
    for block in (0, 5):
        out = np.asarray(jax.jit(lambda *a, block=block: A.cached_attention(*a, scale=SCALE, block=block))(
            q3, k_parts, v, pos))
        for r in range(B):
            for j in range(3):
                p = int(pos[r, j])
                if p < 0:
                    if block:  # the dense pass (block 0) averages everything; blocked gives 0
                        np.testing.assert_array_equal(out[r, j], 0.0)
                    continue
                sl = slice(0, p + 1)
                s = jnp.einsum("kgd,skd->kgs", q3[0][r, j], k_parts[0][r, sl]) * SCALE
                ref = jnp.einsum("kgs,skd->kgd", jax.nn.softmax(s, axis=-1), v[r, sl])
                np.testing.assert_allclose(out[r, j], np.asarray(ref), atol=2e-6, err_msg=f"block {block}")


def _model_value_and_grad(cfg, tokens, positions, segs):
    graphdef, params, rest = nnx.split(M.Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

    def loss(params):
        model = nnx.merge(graphdef, params, rest)
        hidden, _, aux = model(tokens, positions, segs)
        logp = jax.nn.log_softmax(model.logits(hidden), axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
        return jnp.mean(nll * (segs != 0)) + aux.aux_loss

    return jax.jit(jax.value_and_grad(loss))(params)


# tiny_moe: one MLA (latent keys expanded per head + the shared rope key) + MoE layer
@pytest.mark.parametrize("variant,block", [("tiny_dense", 5), ("tiny_moe", 4)])
def test_transformer_loss_and_grads_blockwise_equal_dense(variant, block):
    base = dataclasses.replace(M.get_variant(variant), init_std=0.2, n_layers=1, first_k_dense=0,
                               n_mtp=0)
    _, _, _, positions, segs, _ = _inputs()
    tokens = jnp.asarray(np.random.RandomState(0).randint(1, base.vocab_size, (B, T)))
    (l0, g0), (l1, g1) = (
        _model_value_and_grad(dataclasses.replace(base, train_attention_block=blk), tokens, positions, segs)
        for blk in (0, block))
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    leaves0, leaves1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
    assert len(leaves0) == len(leaves1) and any(float(np.abs(a).max()) > 0 for a in leaves0)
    # per leaf relative, with a floor at the largest gradient's scale: some leaves are ~0 in exact
    # arithmetic (float noise ~1e-9 either way)
    floor = 1e-6 * max(float(np.abs(a).max()) for a in leaves0)
    for a, b in zip(leaves0, leaves1):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5 * float(np.abs(a).max()) + floor)


def _grad_temp_bytes(attention, t):
    """Compiled temporary bytes of value_and_grad of an attention-only loss at length t (compile only)."""
    q = jax.ShapeDtypeStruct((1, t, 2, 2, 32), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, 2, 32), jnp.float32)
    pos = jax.ShapeDtypeStruct((1, t), jnp.int32)

    def loss(q, k, v, positions):
        return jnp.sum(attention((q,), (k,), v, positions, positions) ** 2)

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, pos).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_compiled_memory_linear_in_length_not_quadratic():
    lengths = (1024, 2048, 4096)
    dense = [_grad_temp_bytes(lambda *a: A.dense_attention(*a, scale=SCALE), t) for t in lengths]
    block = [_grad_temp_bytes(_blockwise(256), t) for t in lengths]
    print("\nvalue_and_grad temp bytes (B=1, 4 query heads / 2 kv heads, d=32, block 256)")
    for t, d, b in zip(lengths, dense, block):
        print(f"T={t:5d}  dense {d / 2**20:8.1f} MiB  blockwise {b / 2**20:6.1f} MiB")
    for i in range(len(lengths) - 1):
        assert dense[i + 1] / dense[i] > 3.5  # quadratic: [T, T] scores
        assert block[i + 1] / block[i] < 2.5  # linear (plus a constant [block, block] tile)
    assert block[-1] < dense[-1] / 20


def test_memory_stays_linear_under_scanned_layers():
    """Inside a scan over layers the masks must be computed per tile, not hoisted out of the layer loop
    as loop-invariant residuals for every (query block, key block) pair (which is O(T^2))."""
    def temp_mib(t):
        cfg = dataclasses.replace(M.get_variant("tiny_dense"), n_layers=2, train_attention_block=128,
                                  scan_layers=True, remat=True, max_position_embeddings=8192)
        graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: M.Transformer(cfg, rngs=nnx.Rngs(0))),
                                           nnx.Param, ...)

        def loss(params, rest, tokens):
            positions = jnp.broadcast_to(jnp.arange(t), tokens.shape)
            hidden, _, _ = nnx.merge(graphdef, params, rest)(tokens, positions)
            return jnp.mean(hidden.astype(jnp.float32) ** 2)

        tokens = jax.ShapeDtypeStruct((1, t), jnp.int32)
        compiled = jax.jit(jax.value_and_grad(loss)).lower(params, rest, tokens).compile()
        return compiled.memory_analysis().temp_size_in_bytes / 2**20

    small, large = temp_mib(1024), temp_mib(4096)
    assert large / small < 5.0, (small, large)  # linear: ~4x for 4x the tokens; the hoisted masks gave ~12x
