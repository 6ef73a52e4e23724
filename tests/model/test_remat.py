"""cfg.remat (jax.checkpoint per block) changes memory, not math: same loss and gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import r1jax.model as M


def test_remat_gives_identical_gradients():
    base = dataclasses.replace(M.get_variant("tiny_moe"), n_layers=2, n_mtp=0, init_std=0.2, seq_aux_alpha=0.01)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, base.vocab_size, (2, 8)))
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
    results = []
    for remat in (False, True):
        graphdef, params, rest = nnx.split(M.Transformer(dataclasses.replace(base, remat=remat),
                                                         rngs=nnx.Rngs(0)), nnx.Param, ...)

        def loss(params, graphdef=graphdef, rest=rest):
            hidden, _, aux = nnx.merge(graphdef, params, rest)(tokens, positions)
            return jnp.mean(hidden.astype(jnp.float32) ** 2) + aux.aux_loss

        results.append(jax.jit(jax.value_and_grad(loss))(params))
        assert ("remat" in str(jax.make_jaxpr(loss)(params))) == remat  # the checkpoint primitive
    (l0, g0), (l1, g1) = results
    assert float(l0) == float(l1)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6 * float(np.abs(a).max()) + 1e-12)
    assert any(float(np.abs(a).max()) > 0 for a in jax.tree.leaves(g0))
