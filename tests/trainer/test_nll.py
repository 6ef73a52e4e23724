"""The SFT / pretraining objective through the real SFT pipeline (grain first-fit packing): the loss
equals a float64 NumPy cross-entropy from separate forwards of each packed document; micro-batching
and an 8-device mesh give the single-device step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.data import procedural
from r1jax.data.pipeline import RAW_TEXT, SFTPipelineConfig, make_sft_dataset
from r1jax.data.tokenizer import SentencePieceTokenizer
from r1jax.model import Transformer, create_sharded, get_variant
from r1jax.parallel.mesh import MeshConfig, make_mesh, single_device_mesh
from r1jax.trainer.nll import nll_objective
from r1jax.trainer.optimizer import OptimConfig, make_optimizer
from r1jax.trainer.state import init_train_state, shard_batch, split_model_state, train_state_shardings
from r1jax.trainer.step import StepConfig, make_train_step


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [procedural.generate(procedural.ProceduralConfig("arithmetic", 100, 2), i)["question"]
              for i in range(60)]
    return SentencePieceTokenizer.train(corpus, vocab_size=320)


def _examples(n=16):
    out = []
    for i in range(n):
        ex = procedural.generate(procedural.ProceduralConfig("arithmetic", 100, 2), i)
        out.append({"id": str(i), "question": ex["question"], "response": f"<think> ok </think> <answer> "
                    f"{ex['answer']} </answer>", "text": ex["question"] + " = " + ex["answer"]})
    return out


def _batch(tokenizer, template, seq_len=160, batch_size=4):
    cfg = SFTPipelineConfig(batch_size=batch_size, seq_len=seq_len, template=template, shuffle=False,
                            num_epochs=1)
    return next(iter(make_sft_dataset(_examples(), tokenizer, cfg)[0]))


def _reference_nll(model, batch) -> tuple[float, int]:
    """Mean NLL over target tokens: every packed document gets its own forward (positions from 0),
    float64 log-softmax; token t counts when its loss mask is 1 and t > 0 within its document."""
    total, count = 0.0, 0
    for row in range(batch.tokens_bl.shape[0]):
        seg = batch.segment_ids_bl[row]
        for s in np.unique(seg[seg > 0]):
            idx = np.flatnonzero(seg == s)
            toks, mask = batch.tokens_bl[row, idx], batch.loss_mask_bl[row, idx]
            hidden, _, _ = model(jnp.asarray(toks[None]), jnp.arange(len(toks))[None])
            logits = np.asarray(model.logits(hidden)[0], np.float64)
            logp = logits - logits.max(-1, keepdims=True)
            logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
            for t in range(1, len(toks)):
                if mask[t]:
                    total -= logp[t - 1, toks[t]]
                    count += 1
    return total / count, count


@pytest.mark.parametrize("template", [RAW_TEXT, "chatml"])  # pretraining: every token; SFT: response only
def test_packed_loss_equals_float64_reference_from_separate_forwards(tokenizer, template):
    cfg = dataclasses.replace(get_variant("tiny_dense"), vocab_size=tokenizer.vocab_size)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = _batch(tokenizer, template)
    assert (batch.segment_ids_bl.max(axis=1) >= 2).any(), "the rows must really be packed"
    if template != RAW_TEXT:
        assert 0 < batch.loss_mask_bl[batch.segment_ids_bl > 0].mean() < 1  # prompts carry no loss
    objective = nll_objective(chunk=5)

    @jax.jit
    def loss_of(p, r, b):
        loss, sums, _ = objective.loss(nnx.merge(graphdef, p, r), objective.prepare(b))
        return loss, objective.metrics(b, sums)

    loss, metrics = loss_of(params, rest, batch)
    want, count = _reference_nll(model, batch)
    assert int(metrics["tokens"]) == count
    np.testing.assert_allclose(float(metrics["nll"]), want, rtol=1e-5)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_sharded_microbatched_step_equals_single_device(tokenizer):
    batch = _batch(tokenizer, "chatml", batch_size=8)
    cfg = dataclasses.replace(get_variant("tiny_dense"), vocab_size=tokenizer.vocab_size)
    out = {}
    for name, mesh, micro in (("one", single_device_mesh(), 1), ("eight", make_mesh(MeshConfig(data=2, fsdp=4)), 2)):
        graphdef, state = create_sharded(cfg, mesh, 0)
        params, rest = split_model_state(state)
        # eps=1e-3: Adam divides by |g| + eps, which turns round-off in near-zero gradients (reduction
        # order differs across devices) into full-size steps; a larger eps compares the computation.
        opt = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=1e-3), params)
        ts = init_train_state(params, rest, opt, mesh, 0)
        step = make_train_step(graphdef, nll_objective(8), opt, mesh, train_state_shardings(params, rest, opt, mesh),
                               StepConfig(micro_batches=micro, logprob_chunk=8))
        ts, m = step(ts, shard_batch(batch, mesh))
        out[name] = (jax.device_get(ts.params), float(m["loss"]), float(m["tokens"]))
    assert out["one"][1] == pytest.approx(out["eight"][1], rel=1e-5)
    assert out["one"][2] == out["eight"][2]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), out["one"][0], out["eight"][0])
