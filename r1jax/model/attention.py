"""Attention: grouped-query (Qwen2/Llama) and Multi-head Latent Attention (DeepSeek-V2/V3).

Masking is by position (docs/contracts.md): a query at position p sees a key at position q iff
q <= p, and, without a cache, only keys of the same segment when segment ids are given.
With a cache, slot = absolute position: the new keys are written at slots `positions_bt` first,
then the query attends over all S slots with mask `slot <= position`.

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


def attention_mask(positions_bt, segment_ids_bt=None, cache_len: int | None = None):
    """Boolean mask [B, T, S]: keys are the tokens themselves (no cache) or the cache slots."""
    q = positions_bt[:, :, None]
    if cache_len is not None:
        return jnp.arange(cache_len, dtype=positions_bt.dtype)[None, None, :] <= q
    mask = positions_bt[:, None, :] <= q
    if segment_ids_bt is not None:
        mask &= segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
    return mask


def _probs(scores, mask_b1ts):
    """Masked float32 softmax over the last axis."""
    return jax.nn.softmax(jnp.where(mask_b1ts, scores, _NEG), axis=-1)


def _write(cache_bs, new_bt, positions_bt):
    """Writes the new entries at slots positions_bt (out-of-range slots are dropped)."""
    b_idx = jnp.arange(cache_bs.shape[0])[:, None]
    return cache_bs.at[b_idx, positions_bt].set(new_bt.astype(cache_bs.dtype), mode="drop")


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
        if cache is not None:
            cache = {"k": _write(cache["k"], kk, positions_bt), "v": _write(cache["v"], v, positions_bt)}
            kk, v = cache["k"], cache["v"]
            mask = attention_mask(positions_bt, cache_len=kk.shape[1])
        else:
            mask = attention_mask(positions_bt, segment_ids_bt)
        q = q.reshape(b, t, k, h // k, d)
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
            c_bsr, kr_bse = cache["c_kv"], cache["k_rope"]
            q_lat = jnp.einsum("bthn,rhn->bthr", q_nope, w_uk_rhn)
            scores = (jnp.einsum("bthr,bsr->bhts", q_lat, c_bsr, preferred_element_type=jnp.float32)
                      + jnp.einsum("bthe,bse->bhts", q_rope, kr_bse, preferred_element_type=jnp.float32))
            mask = attention_mask(positions_bt, cache_len=c_bsr.shape[1])
            p = _probs(scores * cfg.softmax_scale, mask[:, None]).astype(c_bsr.dtype)
            o = jnp.einsum("bthr,rhv->bthv", jnp.einsum("bhts,bsr->bthr", p, c_bsr), w_uv_rhv)
        return self.o_proj(o.reshape(b, t, h * dv)), cache
