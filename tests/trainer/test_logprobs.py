"""Chunked log-probs and entropies == naive full logits (float64 NumPy), values and gradients."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "grpo"))
from grpo_reference import logprobs_np  # noqa: E402

from r1jax.trainer.logprobs import shift_to_sequence, token_logprobs, token_logprobs_and_entropy

B, T, D, V = 3, 13, 8, 50


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(B, T, D)).astype(np.float32)
    w = (rng.normal(size=(D, V)) * 0.8).astype(np.float32)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    return hidden, w, targets


@pytest.mark.parametrize("chunk", [1, 4, 13, 64])
def test_chunked_equals_naive(inputs, chunk):
    hidden, w, targets = inputs
    logp, ent = token_logprobs_and_entropy(jnp.asarray(hidden), jnp.asarray(w), jnp.asarray(targets), chunk)
    want_logp, want_ent, _ = logprobs_np(hidden, w, targets)
    np.testing.assert_allclose(np.asarray(logp), want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-5, atol=1e-5)


def test_chunked_gradient_equals_naive(inputs):
    hidden, w, targets = inputs
    g_bt = np.random.default_rng(1).normal(size=(B, T))  # an arbitrary cotangent
    f = lambda h, w_: jnp.sum(token_logprobs(h, w_, jnp.asarray(targets), 4) * g_bt)
    gh, gw = jax.grad(f, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(w))
    # float64 NumPy: d logp_t / d logits = onehot(target) - softmax
    _, _, p = logprobs_np(hidden, w, targets)
    onehot = np.eye(V)[targets]
    dlogits = g_bt[..., None] * (onehot - p)
    want_gh = np.einsum("btv,dv->btd", dlogits, w.astype(np.float64))
    want_gw = np.einsum("btd,btv->dv", hidden.astype(np.float64), dlogits)
    np.testing.assert_allclose(np.asarray(gh), want_gh, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), want_gw, rtol=1e-4, atol=1e-5)


def test_full_logits_never_materialised(inputs):
    hidden, w, targets = inputs
    f = lambda h, w_: jnp.sum(token_logprobs(h, w_, jnp.asarray(targets), 4))
    hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(hidden, w).compile().as_text()
    assert f"f32[{B},{T},{V}]" not in hlo and f"f32[{B},{T + 3},{V}]" not in hlo
    assert f"f32[{B},4,{V}]" in hlo  # the chunk is what exists


def test_shift_to_sequence():
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(shift_to_sequence(x)), [[0, 0, 1], [0, 3, 4]])
