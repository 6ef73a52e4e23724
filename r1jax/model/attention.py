"""Attention: grouped-query (Qwen2/Llama) and Multi-head Latent Attention (DeepSeek-V2/V3).

Masking is by position (docs/contracts.md): a query at position p sees a key at position q iff
q <= p, and, without a cache, only keys of the same segment when segment ids are given.
With a cache, slot = absolute position: the new keys are written at slots `positions_bt` first,
then the query attends over the slots with mask `slot <= position` (`cached_attention`): in blocks of
cfg.attention_block slots with an online softmax, stopping after the block that holds the batch's
furthest position, so a decode step reads the filled part of the cache, not all of it.

Without a cache (training, scoring), cfg.train_attention_block > 0 runs `blockwise_attention`: the same
online-softmax block step (`_online_step`) in static loops over query blocks and key blocks, with a
flash-attention backward (`jax.custom_vjp`) that recomputes each tile's probabilities from the saved
log-sum-exp, so neither pass holds [T, S] scores (memory linear in T); 0 keeps the dense [B, H, T, S]
float32 scores.

Scores and softmax are float32 (as transformers' eager attention); masked entries get a large
finite negative rather than -inf, so a row with nothing visible (padding) stays finite.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.model.layers import Linear, RMSNorm, apply_rope

_NEG = -1e30
# DeepSeek's q_a/kv_a RMSNorms use the default eps, not config.rms_norm_eps (as in transformers)
LORA_NORM_EPS = 1e-6


def attention_mask(positions_bt, segment_ids_bt=None):
    """Boolean mask [B, T, T] of the cache-free forward: causal by position, within a segment."""
    q = positions_bt[:, :, None]
    mask = positions_bt[:, None, :] <= q
    if segment_ids_bt is not None:
        mask &= segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
    return mask


def _probs(scores, mask_b1ts):
    """Masked float32 softmax over the last axis."""
    return jax.nn.softmax(jnp.where(mask_b1ts, scores, _NEG), axis=-1)


# ----------------------------------------------------------------------------- the shared core
# Layout: queries q [B, T, K, G, D] (K key/value heads, G query heads per kv head), keys k [B, S, K, D].
# A key part with K = 1 on a K > 1 query is shared by every head (MLA's rope key): its einsums drop
# the head axis instead of broadcasting the key to K copies.


def _part_scores(q_btkgd, k_bskd):
    """float32 q . k -> [B, K, G, T, S]."""
    if k_bskd.shape[2] == 1 and q_btkgd.shape[2] != 1:
        return jnp.einsum("btkgd,bsd->bkgts", q_btkgd, k_bskd[:, :, 0], preferred_element_type=jnp.float32)
    return jnp.einsum("btkgd,bskd->bkgts", q_btkgd, k_bskd, preferred_element_type=jnp.float32)


def _scores(q_parts, k_parts, scale: float):
    """float32 [B, K, G, T, S] = sum_i q_i . k_i * scale (MLA: latent + rope parts)."""
    return sum(_part_scores(q, k) for q, k in zip(q_parts, k_parts, strict=True)) * scale


def _init_stats(q_btkgd, dv: int):
    """Online-softmax statistics: running max m, running sum l [B, K, G, T], output acc [B, K, G, T, Dv]."""
    b, t, kk, g = q_btkgd.shape[:4]
    return (jnp.full((b, kk, g, t), _NEG, jnp.float32), jnp.zeros((b, kk, g, t), jnp.float32),
            jnp.zeros((b, kk, g, t, dv), jnp.float32))


def _online_step(stats, q_parts, k_blk_parts, v_blk_bskd, mask_bkgts, scale: float):
    """One key block of the online softmax: folds softmax-weighted v_blk into (m, l, acc). Masked keys
    contribute exactly 0, so a block a query cannot see leaves its statistics unchanged."""
    m, total, acc = stats
    sc = jnp.where(mask_bkgts, _scores(q_parts, k_blk_parts, scale), _NEG)
    m_new = jnp.maximum(m, jnp.max(sc, axis=-1))
    p = jnp.where(mask_bkgts, jnp.exp(sc - m_new[..., None]), 0.0)
    rescale = jnp.exp(m - m_new)
    pv = jnp.einsum("bkgts,bskd->bkgtd", p.astype(v_blk_bskd.dtype), v_blk_bskd,
                    preferred_element_type=jnp.float32)
    return m_new, total * rescale + jnp.sum(p, axis=-1), acc * rescale[..., None] + pv


def _finish(stats):
    """-> (out float32 [B, T, K, G, Dv], lse float32 [B, K, G, T]). A query that saw nothing (l = 0)
    gets out 0 and lse 0 (its recomputed probabilities are masked to 0 anyway), not NaN."""
    m, total, acc = stats
    seen = total > 0
    out = acc / jnp.where(seen, total, 1.0)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, total, 1.0)), 0.0)
    return jnp.transpose(out, (0, 3, 1, 2, 4)), lse


def cached_attention(q_parts, k_parts, v_bskd, positions_bt, *, scale: float, block: int):
    """softmax(sum_i q_i . k_i * scale, mask slot <= position) @ v over the cache slots, in query-group
    layout: q_i [B, T, K, G, D_i], k_i [B, S, K, D_i] (several parts are summed: MLA's latent and rope
    keys), v [B, S, K, Dv] -> [B, T, K, G, Dv] in v's dtype.

    With 0 < block < S, the slots are read block by block (online softmax, float32 running max / sum /
    output) in a while loop that stops after the block holding max(positions_bt): nothing past the
    batch's furthest position is read. The last block is read from S - block, so it may overlap the one
    before; slots below the block's own start are masked out there. A dense pass otherwise (the same
    function; the blocked path differs from it only by float rounding).
    """
    s = v_bskd.shape[1]
    q_pos_b1t1 = positions_bt[:, None, None, :, None]

    if not 0 < block < s:
        slot = jnp.arange(s, dtype=positions_bt.dtype)
        p = _probs(_scores(q_parts, k_parts, scale), slot <= q_pos_b1t1).astype(v_bskd.dtype)
        return jnp.einsum("bkgts,bskd->btkgd", p, v_bskd)

    def body(carry):
        i, stats = carry
        start = jnp.minimum(i * block, s - block)
        slot = start + jnp.arange(block, dtype=positions_bt.dtype)
        # an overlapping last block: the slots below i * block were counted already
        mask = (slot <= q_pos_b1t1) & (slot >= i * block)
        k_blk = [jax.lax.dynamic_slice_in_dim(k, start, block, axis=1) for k in k_parts]
        v_blk = jax.lax.dynamic_slice_in_dim(v_bskd, start, block, axis=1)
        return i + 1, _online_step(stats, q_parts, k_blk, v_blk, mask, scale)

    n_blocks = jnp.minimum(jnp.max(positions_bt) // block + 1, -(-s // block))
    init = (jnp.int32(0), _init_stats(q_parts[0], v_bskd.shape[-1]))
    _, stats = jax.lax.while_loop(lambda c: c[0] < n_blocks, body, init)
    # decode and prefill queries always see slot 0; a query that sees nothing would get 0, not NaN
    return _finish(stats)[0].astype(v_bskd.dtype)


# ----------------------------------------------------------------------------- cache-free attention


def _blocks(x_bs, block: int, fill):
    """[B, S, ...] -> [S/block, B, block, ...] (S padded up to a multiple of block with `fill`)."""
    b, s = x_bs.shape[:2]
    n = -(-s // block)
    x_bs = jnp.pad(x_bs, [(0, 0), (0, n * block - s)] + [(0, 0)] * (x_bs.ndim - 2), constant_values=fill)
    return jnp.moveaxis(x_bs.reshape(b, n, block, *x_bs.shape[2:]), 1, 0)


def _unblock(x_nbs, s: int):
    """Inverse of _blocks: [n, B, block, ...] -> [B, S, ...]."""
    n, b, blk = x_nbs.shape[:3]
    return jnp.moveaxis(x_nbs, 0, 1).reshape(b, n * blk, *x_nbs.shape[3:])[:, :s]


def _block_mask(qpos_bt, qseg_bt, kpos_bs, kseg_bs):
    """[B, 1, 1, Tq, Sk] = `attention_mask` between a query block and a key block."""
    mask = kpos_bs[:, None, :] <= qpos_bt[:, :, None]
    if qseg_bt is not None:
        mask &= kseg_bs[:, None, :] == qseg_bt[:, :, None]
    return mask[:, None, None]


def _split(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, block):
    """The scanned inputs, in blocks of `block` tokens: queries (q parts, positions, segments) and keys
    (k parts, v, positions, segments). Padded keys sit past every position and padded queries before
    every position, so padding sees nothing and is seen by nothing."""
    # Tie positions to the queries: inside a scan over layers the masks depend on positions alone, so JAX's
    # scan partial evaluation would hoist them out of the layer loop as loop-invariant residuals, stacked
    # for every (query block, key block) pair: O(T^2) memory. Depending on q, they are computed per tile.
    positions_bt, segment_ids_bt, _ = jax.lax.optimization_barrier((positions_bt, segment_ids_bt, q_parts[0]))
    i32 = jnp.iinfo(positions_bt.dtype)
    seg = (lambda fill: None) if segment_ids_bt is None else (lambda fill: _blocks(segment_ids_bt, block, fill))
    qx = (tuple(_blocks(q, block, 0) for q in q_parts), _blocks(positions_bt, block, i32.min), seg(0))
    kx = (tuple(_blocks(k, block, 0) for k in k_parts), _blocks(v_bskd, block, 0),
          _blocks(positions_bt, block, i32.max), seg(0))
    return qx, kx


def _blockwise_fwd_pass(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, scale, block):
    """-> (out [B, T, K, G, Dv] in v's dtype, lse float32 [T/block, B, K, G, block]): for each query block
    (lax.map) a scan over the key blocks."""
    qx, kx = _split(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, block)

    def query_block(qx_c):
        q_c, qpos, qseg = qx_c

        def body(stats, kx_j):
            k_blk, v_blk, kpos, kseg = kx_j
            return _online_step(stats, q_c, k_blk, v_blk, _block_mask(qpos, qseg, kpos, kseg), scale), None

        stats, _ = jax.lax.scan(body, _init_stats(q_c[0], v_bskd.shape[-1]), kx)
        out, lse = _finish(stats)
        return out.astype(v_bskd.dtype), lse

    out_n, lse_n = jax.lax.map(query_block, qx)
    return _unblock(out_n, positions_bt.shape[1]), lse_n


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _blockwise(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, scale, block):
    return _blockwise_fwd_pass(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, scale, block)[0]


def _blockwise_fwd(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, scale, block):
    out, lse_n = _blockwise_fwd_pass(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, scale, block)
    return out, (q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, out, lse_n)


def _blockwise_bwd(scale, block, res, d_out_btkgd):
    """Flash-attention backward: per (query block, key block), p = exp(s - lse) is recomputed; with
    D = rowsum(dO * O), ds = p * (dO . v - D). The outer scan over query blocks carries dk / dv of every
    key (float32, [B, S, ...]); the inner scan over key blocks carries the query block's dq. Memory: one
    [block, block] tile of scores per head, never [T, S]."""
    q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, out, lse_n = res
    t = positions_bt.shape[1]
    qx, kx = _split(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, block)
    delta_btkg = jnp.einsum("btkgd,btkgd->btkg", d_out_btkgd.astype(jnp.float32), out.astype(jnp.float32))
    do_n = jnp.transpose(_blocks(d_out_btkgd, block, 0), (0, 1, 3, 4, 2, 5))  # [n, B, K, G, block, Dv]
    delta_n = jnp.transpose(_blocks(delta_btkg, block, 0), (0, 1, 3, 4, 2))  # [n, B, K, G, block]

    def query_block(d_kv, xs):
        (q_c, qpos, qseg), do_c, delta_c, lse_c = xs

        def body(dq_parts, kx_j):
            k_blk, v_blk, kpos, kseg = kx_j
            mask = _block_mask(qpos, qseg, kpos, kseg)
            p = jnp.where(mask, jnp.exp(_scores(q_c, k_blk, scale) - lse_c[..., None]), 0.0)
            dv = jnp.einsum("bkgts,bkgtd->bskd", p.astype(v_bskd.dtype), do_c.astype(v_bskd.dtype),
                            preferred_element_type=jnp.float32)
            dp = jnp.einsum("bkgtd,bskd->bkgts", do_c, v_blk, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_c[..., None]) * scale
            dq_new, dk = [], []
            for q, k, dq in zip(q_c, k_blk, dq_parts, strict=True):
                ds_c = ds.astype(q.dtype)
                if k.shape[2] == 1 and q.shape[2] != 1:  # a key shared by every head (see _part_scores)
                    # (k first: XLA:CPU cannot run this bf16 x bf16 -> f32 dot with ds as the lhs)
                    dq_new.append(dq + jnp.einsum("bsd,bkgts->btkgd", k[:, :, 0], ds_c,
                                                  preferred_element_type=jnp.float32))
                    dk.append(jnp.einsum("bkgts,btkgd->bsd", ds_c, q, preferred_element_type=jnp.float32)[:, :, None])
                else:
                    dq_new.append(dq + jnp.einsum("bkgts,bskd->btkgd", ds_c, k, preferred_element_type=jnp.float32))
                    dk.append(jnp.einsum("bkgts,btkgd->bskd", ds_c, q, preferred_element_type=jnp.float32))
            return tuple(dq_new), (tuple(dk), dv)

        dq0 = tuple(jnp.zeros(q.shape, jnp.float32) for q in q_c)
        dq_c, d_kv_c = jax.lax.scan(body, dq0, kx)
        return jax.tree.map(jnp.add, d_kv, d_kv_c), dq_c

    d_kv0 = (tuple(jnp.zeros(k.shape, jnp.float32) for k in kx[0]), jnp.zeros(kx[1].shape, jnp.float32))
    (dk_n, dv_n), dq_n = jax.lax.scan(query_block, d_kv0, (qx, do_n, delta_n, lse_n))
    dq = tuple(_unblock(d, t).astype(q.dtype) for d, q in zip(dq_n, q_parts, strict=True))
    dk = tuple(_unblock(d, t).astype(k.dtype) for d, k in zip(dk_n, k_parts, strict=True))
    # integer positions / segment ids have no cotangent
    return dq, dk, _unblock(dv_n, t).astype(v_bskd.dtype), None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt=None, *, scale: float,
                        block: int):
    """Cache-free causal attention (queries and keys are the same T tokens) in blocks of `block` tokens:
    softmax(sum_i q_i . k_i * scale, `attention_mask`) @ v, layout as `cached_attention` (q_i
    [B, T, K, G, D_i]; k_i [B, T, K, D_i], or [B, T, 1, D_i] for a key shared by all K heads; v
    [B, T, K, Dv]) -> [B, T, K, G, Dv] in v's dtype.

    Static loops (so it is reverse-differentiable) over ceil(T / block) query blocks and, inside, key
    blocks, sharing `_online_step` with cached_attention; a custom VJP recomputes each tile's
    probabilities from the saved float32 log-sum-exp. Compiled memory is O(B T H D) (residuals q, k, v,
    out, lse and the float32 dq / dk / dv accumulators) + O(B H block^2) (one tile of scores): linear in
    T. Every tile is computed, masked or not: the FLOPs are the dense ones. A query that sees no key
    (none does under `attention_mask`, each sees itself) gets 0 and zero gradients.
    """
    block = min(block, v_bskd.shape[1])
    return _blockwise(tuple(q_parts), tuple(k_parts), v_bskd, positions_bt, segment_ids_bt, scale, block)


def dense_attention(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt=None, *, scale: float):
    """The same function as blockwise_attention through dense [B, K, G, T, T] float32 scores."""
    mask = attention_mask(positions_bt, segment_ids_bt)[:, None, None]
    p = _probs(_scores(q_parts, k_parts, scale), mask).astype(v_bskd.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", p, v_bskd)


def self_attention(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt=None, *, scale: float, block: int):
    """The cache-free forward's attention: blockwise when block > 0 (cfg.train_attention_block), else
    dense."""
    if block > 0:
        return blockwise_attention(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, scale=scale,
                                   block=block)
    return dense_attention(q_parts, k_parts, v_bskd, positions_bt, segment_ids_bt, scale=scale)


def _write(cache_bs, new_bt, positions_bt):
    """Writes the new entries at slots positions_bt (out-of-range slots are dropped). A row's positions
    are distinct (slot = absolute position), so the scatter is declared unique: XLA then updates the
    slots in place instead of passing over the whole cache (on CPU, 6x less time at 2K slots)."""
    b_idx = jnp.arange(cache_bs.shape[0])[:, None]
    return cache_bs.at[b_idx, positions_bt].set(new_bt.astype(cache_bs.dtype), mode="drop",
                                                unique_indices=True)


class GQAttention(nnx.Module):
    """Grouped-query attention with RoPE; MHA when n_kv_heads == n_heads."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        h, k, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.q_proj = Linear(cfg.d_model, h * d, ("embed", "heads"), cfg, bias=cfg.qkv_bias, rngs=rngs)
        self.k_proj = Linear(cfg.d_model, k * d, ("embed", "kv_heads"), cfg, bias=cfg.qkv_bias, rngs=rngs)
        self.v_proj = Linear(cfg.d_model, k * d, ("embed", "kv_heads"), cfg, bias=cfg.qkv_bias, rngs=rngs)
        self.o_proj = Linear(h * d, cfg.d_model, ("heads", "embed"), cfg, bias=cfg.o_bias, rngs=rngs)

    def init_cache(self, batch: int, max_len: int) -> dict:
        shape = (batch, max_len, self.cfg.n_kv_heads, self.cfg.d_head)
        return {"k": jnp.zeros(shape, self.cfg.jnp_dtype), "v": jnp.zeros(shape, self.cfg.jnp_dtype)}

    def __call__(self, x_btd, positions_bt, cos_sin, segment_ids_bt=None, cache=None):
        cfg = self.cfg
        b, t, _ = x_btd.shape
        h, k, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        q = self.q_proj(x_btd).reshape(b, t, h, d)
        kk = self.k_proj(x_btd).reshape(b, t, k, d)
        v = self.v_proj(x_btd).reshape(b, t, k, d)
        q = apply_rope(q, *cos_sin, interleave=cfg.rope_interleave)
        kk = apply_rope(kk, *cos_sin, interleave=cfg.rope_interleave)
        q = q.reshape(b, t, k, h // k, d)
        if cache is not None:
            cache = {"k": _write(cache["k"], kk, positions_bt), "v": _write(cache["v"], v, positions_bt)}
            o = cached_attention((q,), (cache["k"],), cache["v"], positions_bt, scale=cfg.softmax_scale,
                                 block=cfg.attention_block)
            return self.o_proj(o.reshape(b, t, h * d)), cache
        o = self_attention((q,), (kk,), v, positions_bt, segment_ids_bt, scale=cfg.softmax_scale,
                           block=cfg.train_attention_block)
        return self.o_proj(o.reshape(b, t, h * d)), cache


class MLAttention(nnx.Module):
    """Multi-head Latent Attention (DeepSeek-V3 §2.1.1, eq. 1-11).

    The cache holds only the normed KV latent c_kv [B, S, d_c] and the rotated shared key
    k_rope [B, S, d_h^R]. Without a cache (training) keys/values are expanded per head; with a
    cache (decoding) W^UK and W^UV are absorbed into the query and output, so attention runs in
    the d_c latent space and the cache never expands. Both are the same function of the inputs.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        h, qk = cfg.n_heads, cfg.qk_head_dim
        if cfg.q_lora_rank is None:
            self.q_proj = Linear(cfg.d_model, h * qk, ("embed", "heads"), cfg, rngs=rngs)
        else:
            self.q_a_proj = Linear(cfg.d_model, cfg.q_lora_rank, ("embed", "q_lora"), cfg, bias=cfg.qkv_bias,
                                   rngs=rngs)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg, eps=LORA_NORM_EPS)
            self.q_b_proj = Linear(cfg.q_lora_rank, h * qk, ("latent", "heads"), cfg, rngs=rngs)
        self.kv_a_proj_with_mqa = Linear(cfg.d_model, cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                                         ("embed", "kv_lora"), cfg, bias=cfg.qkv_bias, rngs=rngs)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg, eps=LORA_NORM_EPS)
        self.kv_b_proj = Linear(cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                                ("latent", "heads"), cfg, rngs=rngs)
        self.o_proj = Linear(h * cfg.v_head_dim, cfg.d_model, ("heads", "embed"), cfg, bias=cfg.o_bias,
                             rngs=rngs)

    def init_cache(self, batch: int, max_len: int) -> dict:
        dt = self.cfg.jnp_dtype
        return {"c_kv": jnp.zeros((batch, max_len, self.cfg.kv_lora_rank), dt),
                "k_rope": jnp.zeros((batch, max_len, self.cfg.qk_rope_head_dim), dt)}

    def __call__(self, x_btd, positions_bt, cos_sin, segment_ids_bt=None, cache=None):
        cfg = self.cfg
        b, t, _ = x_btd.shape
        h, nope, rope = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
        dv, r = cfg.v_head_dim, cfg.kv_lora_rank
        if cfg.q_lora_rank is None:
            q = self.q_proj(x_btd)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_btd)))
        q = q.reshape(b, t, h, nope + rope)
        q_nope, q_rope = q[..., :nope], q[..., nope:]
        q_rope = apply_rope(q_rope, *cos_sin, interleave=cfg.rope_interleave)
        ckv = self.kv_a_proj_with_mqa(x_btd)
        c_btr = self.kv_a_layernorm(ckv[..., :r])
        k_rope_bte = apply_rope(ckv[..., None, r:], *cos_sin, interleave=cfg.rope_interleave)[:, :, 0]
        w_b = self.kv_b_proj.kernel[...].astype(cfg.jnp_dtype).reshape(r, h, nope + dv)
        w_uk_rhn, w_uv_rhv = w_b[..., :nope], w_b[..., nope:]
        if cache is None:
            kv = self.kv_b_proj(c_btr).reshape(b, t, h, nope + dv)
            k_nope, v = kv[..., :nope], kv[..., nope:]
            # every head its own key/value head (K = h, G = 1); the rope key is one key shared by all
            o = self_attention((q_nope[:, :, :, None], q_rope[:, :, :, None]), (k_nope, k_rope_bte[:, :, None]),
                               v, positions_bt, segment_ids_bt, scale=cfg.softmax_scale,
                               block=cfg.train_attention_block)[:, :, :, 0]
        else:
            cache = {"c_kv": _write(cache["c_kv"], c_btr, positions_bt),
                     "k_rope": _write(cache["k_rope"], k_rope_bte, positions_bt)}
            # one shared latent key/value "head" (K = 1) for all h query heads (G = h)
            c_bs1r, kr_bs1e = cache["c_kv"][:, :, None], cache["k_rope"][:, :, None]
            q_lat = jnp.einsum("bthn,rhn->bthr", q_nope, w_uk_rhn)
            o_lat = cached_attention((q_lat[:, :, None], q_rope[:, :, None]), (c_bs1r, kr_bs1e), c_bs1r,
                                     positions_bt, scale=cfg.softmax_scale, block=cfg.attention_block)
            o = jnp.einsum("bthr,rhv->bthv", o_lat[:, :, 0], w_uv_rhv)
        return self.o_proj(o.reshape(b, t, h * dv)), cache
