"""RMSNorm and RoPE against independent references: float64 NumPy formulas and transformers'
rope initialisers (default, linear, llama3, yarn)."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from transformers import DeepseekV3Config, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import r1jax.model as M
from r1jax.model.config import RopeScaling
from r1jax.model.layers import RMSNorm, apply_rope, rope_inv_freq


def test_rmsnorm_matches_float64():
    cfg = dataclasses.replace(M.get_variant("tiny_dense"), rms_eps=1e-5)
    norm = RMSNorm(16, cfg)
    scale = np.random.RandomState(0).randn(16)
    norm.scale[...] = jnp.asarray(scale, jnp.float32)
    x = np.random.RandomState(1).randn(3, 5, 16) * 3
    ref = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x, jnp.float32))), ref, rtol=1e-5, atol=1e-5)


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


@pytest.mark.parametrize("params", [
    {"rope_type": "default"},
    {"rope_type": "linear", "factor": 4.0},
    LLAMA3,
])
def test_rope_frequencies_match_transformers_llama(params):
    theta, dim = 500000.0, 64
    hf = LlamaConfig(hidden_size=dim * 4, num_attention_heads=4, max_position_embeddings=1024,
                     rope_parameters={**params, "rope_theta": theta})
    fn = (lambda c: (1.0 / theta ** (np.arange(0, dim, 2) / dim), 1.0)) if params["rope_type"] == "default" \
        else ROPE_INIT_FUNCTIONS[params["rope_type"]]
    ref_inv, ref_factor = fn(hf)
    kw = {k: v for k, v in params.items() if k != "rope_type"}
    inv, factor = rope_inv_freq(dim, theta, RopeScaling(type=params["rope_type"], **kw), 1024)
    np.testing.assert_allclose(inv, np.asarray(ref_inv), rtol=1e-6)
    assert factor == pytest.approx(float(ref_factor))
    if params["rope_type"] == "llama3":  # low frequencies really were scaled
        base = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
        assert inv[-1] == pytest.approx(base[-1] / 8.0, rel=1e-5)
        assert inv[0] == pytest.approx(base[0], rel=1e-6)


@pytest.mark.parametrize("mscale, mscale_all_dim", [(1.0, 1.0), (1.0, 0.0), (0.707, 1.0)])
def test_yarn_matches_transformers_deepseek(mscale, mscale_all_dim):
    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
            "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
            "mscale": mscale, "mscale_all_dim": mscale_all_dim}
    hf = DeepseekV3Config(qk_rope_head_dim=64, max_position_embeddings=163840, rope_parameters=rope)
    ref_inv, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](hf)
    rs = RopeScaling(type="yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0,
                     beta_slow=1.0, mscale=mscale, mscale_all_dim=mscale_all_dim)
    inv, factor = rope_inv_freq(64, 10000.0, rs, 163840)
    np.testing.assert_allclose(inv, np.asarray(ref_inv), rtol=1e-6)
    assert factor == pytest.approx(float(ref_factor), rel=1e-6)


def test_mla_softmax_scale_has_yarn_mscale():
    cfg = M.get_variant("deepseek_v3_671b")
    m = 0.1 * 1.0 * math.log(40.0) + 1.0
    assert cfg.softmax_scale == pytest.approx(192**-0.5 * m * m)
    assert M.get_variant("tiny_dense").softmax_scale == pytest.approx(16**-0.5)


@pytest.mark.parametrize("interleave", [False, True])
def test_apply_rope_is_a_complex_rotation(interleave):
    rs = np.random.RandomState(0)
    b, t, h, d = 2, 5, 3, 8
    x = rs.randn(b, t, h, d)
    ang = rs.rand(b, t, d // 2) * 10
    got = np.asarray(apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(np.cos(ang), jnp.float32),
                                jnp.asarray(np.sin(ang), jnp.float32), interleave))
    pairs = (x[..., 0::2] + 1j * x[..., 1::2]) if interleave else (x[..., : d // 2] + 1j * x[..., d // 2:])
    rot = pairs * np.exp(1j * ang)[:, :, None, :]
    ref = np.concatenate([rot.real, rot.imag], -1)  # output in halves layout either way
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
