"""Multi-token prediction (DeepSeek-V3 §2.2): module k at position i sees tokens <= i + k only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import r1jax.model as M


def test_mtp_is_causal_in_the_shifted_sense():
    cfg = dataclasses.replace(M.get_variant("tiny_moe"), n_layers=2, n_mtp=2, init_std=0.2)
    model = M.Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda tokens, pos, cache=None: M.apply(graphdef, state, tokens, pos, cache=cache))
    t, i = 10, 4
    tokens = np.random.RandomState(0).randint(1, cfg.vocab_size, (1, t))
    positions = jnp.arange(t)[None]
    hidden, _, aux = forward(jnp.asarray(tokens), positions)
    mtp = np.asarray(aux.mtp_hidden_kbtd)
    assert mtp.shape == (2, 1, t, cfg.d_model)
    assert aux.expert_load_le.shape == (cfg.n_moe_layers, cfg.n_routed_experts) == (3, cfg.n_routed_experts)

    changed = tokens.copy()
    changed[0, i] = (tokens[0, i] % (cfg.vocab_size - 1)) + 1
    hidden2, _, aux2 = forward(jnp.asarray(changed), positions)
    mtp2 = np.asarray(aux2.mtp_hidden_kbtd)
    # main stack: position j sees tokens <= j; MTP module k: tokens <= j + k
    np.testing.assert_array_equal(np.asarray(hidden2)[0, :i], np.asarray(hidden)[0, :i])
    for k in (1, 2):
        first_affected = i - k
        np.testing.assert_allclose(mtp2[k - 1, 0, :first_affected], mtp[k - 1, 0, :first_affected], atol=1e-6)
        assert np.abs(mtp2[k - 1, 0, first_affected] - mtp[k - 1, 0, first_affected]).max() > 1e-4

    # decoding skips MTP; its load rows are uniform, so the router bias update leaves them alone
    _, _, aux_dec = forward(jnp.asarray(tokens), positions, model.init_cache(1, t))
    assert aux_dec.mtp_hidden_kbtd is None
    np.testing.assert_allclose(np.asarray(aux_dec.expert_load_le[-2:]), 1.0 / cfg.n_routed_experts)
