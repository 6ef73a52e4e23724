"""The SFT / pretraining loss on packed rows equals a float64 NumPy cross-entropy computed from
separate (unpacked) forwards of each document, and one sharded step equals the single-device step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.data.base_corpus import pack_documents
from r1jax.grpo import OptimConfig, init_train_state, make_optimizer, split_model_state, train_state_shardings
from r1jax.model import Transformer, create_sharded, get_variant
from r1jax.parallel.mesh import MeshConfig, make_mesh, single_device_mesh
from r1jax.sft import SFTBatch, make_sft_step, sft_loss

CFG = dataclasses.replace(get_variant("tiny_dense"), vocab_size=64)


def _docs(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 64, size=int(n)).tolist() for n in rng.integers(3, 12, size=10)]


def _batch(packed, rows, mask_prefix=0):
    loss_mask = packed["loss_mask"][rows].copy()
    if mask_prefix:  # SFT: no loss on the first tokens (the "prompt") of every document
        loss_mask &= packed["positions"][rows] >= mask_prefix
    return SFTBatch(jnp.asarray(packed["tokens"][rows]), jnp.asarray(loss_mask),
                    jnp.asarray(packed["segment_ids"][rows]), jnp.asarray(packed["positions"][rows]))


@pytest.mark.parametrize("mask_prefix", [0, 2])
def test_packed_loss_equals_float64_reference_from_separate_forwards(mask_prefix):
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    docs = _docs()
    packed = pack_documents(docs, 24)
    batch = _batch(packed, np.arange(packed["tokens"].shape[0]), mask_prefix)
    loss, metrics = jax.jit(lambda p, r, b: sft_loss(graphdef, p, r, b, chunk=5))(params, rest, batch)

    nll, count = 0.0, 0
    for doc in docs:
        toks = jnp.asarray([doc], jnp.int32)
        hidden, _, _ = model(toks, jnp.arange(len(doc))[None])
        logits = np.asarray(model.logits(hidden)[0], np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        for t in range(1, len(doc)):
            if t >= mask_prefix:
                nll -= logp[t - 1, doc[t]]
                count += 1
    assert int(metrics["tokens"]) == count
    np.testing.assert_allclose(float(metrics["nll"]), nll / count, rtol=1e-5)


def test_sharded_sft_step_equals_single_device():
    docs = _docs(1)
    packed = pack_documents(docs, 16)
    rows = np.arange(8) % packed["tokens"].shape[0]
    out = {}
    for name, mesh in (("one", single_device_mesh()), ("eight", make_mesh(MeshConfig(data=2, fsdp=4)))):
        graphdef, state = create_sharded(CFG, mesh, 0)
        params, rest = split_model_state(state)
        # eps=1e-3: Adam divides by |g| + eps, which turns round-off in near-zero gradients (reduction
        # order differs across devices) into full-size steps; a larger eps compares the computation.
        opt = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=1e-3), params)
        ts = init_train_state(params, rest, opt, mesh, 0)
        step = make_sft_step(graphdef, opt, mesh, train_state_shardings(params, rest, opt, mesh), chunk=8)
        ts, m = step(ts, _batch(packed, rows))
        out[name] = (jax.device_get(ts.params), float(m["loss"]))
    assert out["one"][1] == pytest.approx(out["eight"][1], rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), out["one"][0], out["eight"][0])
