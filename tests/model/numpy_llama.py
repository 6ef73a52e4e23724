"""An independent float64 NumPy forward of the Llama / Qwen2 decoder, written from the papers' formulas.

It reads HF-named weights ([out, in] matrices, rotate-half RoPE layout) so it checks the whole
import chain — GGUF dequantisation, the Q/K un-permutation, the HF -> r1jax mapping — without
sharing a line of code with r1jax or transformers.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: float
    norm_eps: float
    tie_embeddings: bool


def _rms_norm(x_td, w_d, eps):
    return x_td / np.sqrt(np.mean(x_td * x_td, axis=-1, keepdims=True) + eps) * w_d


def _rope(x_thk, positions_t, theta):
    """Rotate-half RoPE: pair dimension i with i + head_dim/2."""
    half = x_thk.shape[-1] // 2
    inv_freq = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / x_thk.shape[-1])
    ang_tk = positions_t[:, None].astype(np.float64) * inv_freq[None, :]
    cos, sin = np.cos(ang_tk)[:, None, :], np.sin(ang_tk)[:, None, :]
    x1, x2 = x_thk[..., :half], x_thk[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def forward(weights: dict[str, np.ndarray], shape: LlamaShape, tokens_t: np.ndarray) -> np.ndarray:
    """Logits [T, V] in float64 for one unpadded sequence (positions 0..T-1, causal)."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    get_b = lambda name: w.get(name)
    t_len = len(tokens_t)
    positions_t = np.arange(t_len)
    x_td = w["model.embed_tokens.weight"][tokens_t]
    causal_tt = np.tril(np.ones((t_len, t_len), dtype=bool))
    group = shape.n_heads // shape.n_kv_heads
    for i in range(shape.n_layers):
        p = f"model.layers.{i}."
        h_td = _rms_norm(x_td, w[p + "input_layernorm.weight"], shape.norm_eps)
        q = _linear(h_td, w[p + "self_attn.q_proj.weight"], get_b(p + "self_attn.q_proj.bias"))
        k = _linear(h_td, w[p + "self_attn.k_proj.weight"], get_b(p + "self_attn.k_proj.bias"))
        v = _linear(h_td, w[p + "self_attn.v_proj.weight"], get_b(p + "self_attn.v_proj.bias"))
        q_thk = _rope(q.reshape(t_len, shape.n_heads, shape.head_dim), positions_t, shape.rope_theta)
        k_thk = _rope(k.reshape(t_len, shape.n_kv_heads, shape.head_dim), positions_t, shape.rope_theta)
        v_thk = v.reshape(t_len, shape.n_kv_heads, shape.head_dim)
        k_thk = np.repeat(k_thk, group, axis=1)
        v_thk = np.repeat(v_thk, group, axis=1)
        s_htt = np.einsum("thk,shk->hts", q_thk, k_thk) / np.sqrt(shape.head_dim)
        s_htt = np.where(causal_tt[None], s_htt, -np.inf)
        s_htt = s_htt - s_htt.max(-1, keepdims=True)
        p_htt = np.exp(s_htt)
        p_htt /= p_htt.sum(-1, keepdims=True)
        o_td = np.einsum("hts,shk->thk", p_htt, v_thk).reshape(t_len, -1)
        x_td = x_td + _linear(o_td, w[p + "self_attn.o_proj.weight"], get_b(p + "self_attn.o_proj.bias"))
        h_td = _rms_norm(x_td, w[p + "post_attention_layernorm.weight"], shape.norm_eps)
        gate = _linear(h_td, w[p + "mlp.gate_proj.weight"])
        up = _linear(h_td, w[p + "mlp.up_proj.weight"])
        x_td = x_td + _linear(gate / (1.0 + np.exp(-gate)) * up, w[p + "mlp.down_proj.weight"])
    x_td = _rms_norm(x_td, w["model.norm.weight"], shape.norm_eps)
    w_vd = w["model.embed_tokens.weight"] if shape.tie_embeddings else w["lm_head.weight"]
    return x_td @ w_vd.T
