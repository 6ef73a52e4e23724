"""Attention: grouped-query (Qwen2/Llama) and Multi-head Latent Attention (DeepSeek-V2/V3).

Masking is by position (docs/contracts.md): a query at position p sees a key at position q iff
q <= p, and, without a cache, only keys of the same segment when segment ids are given.
With a cache, slot = absolute position: the new keys are written at slots `positions_bt` first,
then the query attends over the slots with mask `slot <= position` (`cached_attention`): in blocks of
cfg.attention_block slots with an online softmax, stopping after the block that holds the batch's
furthest position, so a decode step reads the filled part of the cache, not all of it.

Scores and softmax are float32 (as transformers' eager attention); masked entries get a large
finite negative rather than -inf, so a row with nothing visible (padding) stays finite.
"""

from __future__ import annotations

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
    b, s = v_bskd.shape[:2]
    q_pos_b1t1 = positions_bt[:, None, None, :, None]

    def scores(start, width):
        """float32 [B, K, G, T, width] for slots start .. start + width (masked to slot <= position)."""
        total = sum(
            jnp.einsum("btkgd,bskd->bkgts", q, jax.lax.dynamic_slice_in_dim(k, start, width, axis=1),
                       preferred_element_type=jnp.float32)
            for q, k in zip(q_parts, k_parts, strict=True)
        )
        slot = start + jnp.arange(width, dtype=positions_bt.dtype)
        return total * scale, slot <= q_pos_b1t1, slot

    if not 0 < block < s:
        sc, mask, _ = scores(0, s)
        p = _probs(sc, mask).astype(v_bskd.dtype)
        return jnp.einsum("bkgts,bskd->btkgd", p, v_bskd)

    def body(carry):
        i, m, total, acc = carry
        start = jnp.minimum(i * block, s - block)
        sc, mask, slot = scores(start, block)
        mask &= slot >= i * block  # an overlapping last block: those slots were counted already
        sc = jnp.where(mask, sc, _NEG)
        m_new = jnp.maximum(m, jnp.max(sc, axis=-1))
        p = jnp.where(mask, jnp.exp(sc - m_new[..., None]), 0.0)
        rescale = jnp.exp(m - m_new)
        v_blk = jax.lax.dynamic_slice_in_dim(v_bskd, start, block, axis=1)
        pv = jnp.einsum("bkgts,bskd->bkgtd", p.astype(v_bskd.dtype), v_blk, preferred_element_type=jnp.float32)
        return i + 1, m_new, total * rescale + jnp.sum(p, axis=-1), acc * rescale[..., None] + pv

    kk, g, t = q_parts[0].shape[2], q_parts[0].shape[3], positions_bt.shape[1]
    n_blocks = jnp.minimum(jnp.max(positions_bt) // block + 1, -(-s // block))
    init = (jnp.int32(0), jnp.full((b, kk, g, t), _NEG, jnp.float32), jnp.zeros((b, kk, g, t), jnp.float32),
            jnp.zeros((b, kk, g, t, v_bskd.shape[-1]), jnp.float32))
    _, _, total, acc = jax.lax.while_loop(lambda c: c[0] < n_blocks, body, init)
    # a query that sees no slot (total = 0) gets 0, not NaN; decode and prefill queries always see slot 0
    out = acc / jnp.where(total > 0, total, 1.0)[..., None]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).astype(v_bskd.dtype)


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
        mask = attention_mask(positions_bt, segment_ids_bt)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, kk, preferred_element_type=jnp.float32)
        p = _probs(scores * cfg.softmax_scale, mask[:, None, None]).astype(v.dtype)
        o = jnp.einsum("bkgts,bskd->btkgd", p, v).reshape(b, t, h * d)
        return self.o_proj(o), cache


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
            scores = (jnp.einsum("bthn,bshn->bhts", q_nope, k_nope, preferred_element_type=jnp.float32)
                      + jnp.einsum("bthe,bse->bhts", q_rope, k_rope_bte, preferred_element_type=jnp.float32))
            mask = attention_mask(positions_bt, segment_ids_bt)
            p = _probs(scores * cfg.softmax_scale, mask[:, None]).astype(v.dtype)
            o = jnp.einsum("bhts,bshv->bthv", p, v)
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
