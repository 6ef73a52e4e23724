"""Optimizer: warmup + cosine schedule vs its formula, frozen parameters, weight-decay mask."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.trainer.optimizer import OptimConfig, learning_rate_schedule, make_optimizer


def _params():
    return nnx.State({
        "embed_tokens": {"embedding": nnx.Param(jnp.ones((5, 3)))},
        "layers": {0: {"kernel": nnx.Param(jnp.ones((3, 3))), "bias": nnx.Param(jnp.ones((3,)))}},
    })


def test_schedule_matches_formula():
    cfg = OptimConfig(learning_rate=2e-3, warmup_steps=10, total_steps=110, end_lr_ratio=0.1)
    sched = learning_rate_schedule(cfg)
    for step in (0, 5, 10, 35, 60, 110, 200):
        if step < 10:
            want = 2e-3 * step / 10
        else:
            frac = min(step - 10, 100) / 100
            want = 2e-4 + (2e-3 - 2e-4) * 0.5 * (1 + math.cos(math.pi * frac))
        np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-12)


def test_frozen_params_do_not_move_and_decay_skips_vectors():
    params = _params()
    cfg = OptimConfig(learning_rate=0.1, warmup_steps=0, total_steps=10, weight_decay=0.5, clip_norm=1.0,
                      frozen=(r"^embed_tokens\.",))
    tx = make_optimizer(cfg, params)
    state = tx.init(params)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zero_grads, state, params)
    new = jax.tree.map(lambda p, u: p + u, params, updates)
    np.testing.assert_array_equal(np.asarray(new["embed_tokens"]["embedding"][...]), 1.0)
    np.testing.assert_array_equal(np.asarray(new["layers"][0]["bias"][...]), 1.0)  # no decay on vectors
    # AdamW decoupled decay on the matrix with zero gradient: p - lr * wd * p
    np.testing.assert_allclose(np.asarray(new["layers"][0]["kernel"][...]), 1 - 0.1 * 0.5, rtol=1e-6)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 3.0), params)
    updates, state = tx.update(grads, state, params)
    assert float(jnp.abs(updates["embed_tokens"]["embedding"][...]).max()) == 0.0
    assert float(jnp.abs(updates["layers"][0]["bias"][...]).min()) > 0.0


def test_bad_optimizer_config_names_the_field():
    with pytest.raises(ValueError, match="matches no parameter"):
        make_optimizer(OptimConfig(frozen=("nothing_like_this",)), _params())
    with pytest.raises(ValueError, match="warmup_steps"):
        OptimConfig(warmup_steps=20, total_steps=10)
    with pytest.raises(ValueError, match="learning_rate"):
        OptimConfig(learning_rate=0.0)
