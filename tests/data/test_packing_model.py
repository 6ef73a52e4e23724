"""Packed SFT rows attend only within their own segment: the real model's hidden states on a packed
row equal those of each example run alone (unpacked, positions from 0)."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax.data import procedural, templates
from r1jax.data.pipeline import SFTPipelineConfig, make_sft_dataset
from r1jax.data.tokenizer import SentencePieceTokenizer

model_lib = pytest.importorskip("r1jax.model", reason="r1jax.model not available yet")


def test_packed_forward_matches_unpacked():
    questions = [procedural.generate(procedural.ProceduralConfig("arithmetic", 8, 2), i)["question"]
                 for i in range(8)]
    examples = [{"id": str(k), "question": q, "response": f"{'step ' * k}done"}
                for k, q in enumerate(questions)]
    tok = SentencePieceTokenizer.train(questions + ["step done", templates.CHATML] * 5, vocab_size=360)
    cfg = SFTPipelineConfig(batch_size=2, seq_len=160, template="chatml", shuffle=False)
    batch = next(iter(make_sft_dataset(examples, tok, cfg, 0, 1)[0]))
    assert batch.segment_ids_bl.max(axis=1).min() >= 2  # every row really is packed

    model_cfg = dataclasses.replace(model_lib.get_variant("tiny_dense"), vocab_size=tok.vocab_size)
    graphdef, state = nnx.split(model_lib.Transformer(model_cfg, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda t, p, s: model_lib.apply(graphdef, state, t, p, segment_ids_bt=s)[0])
    packed_btd = np.asarray(forward(batch.tokens_bl, batch.positions_bl, batch.segment_ids_bl), np.float64)

    # Reference: every example alone in its own row from position 0. Right padding after it cannot
    # change its hidden states (causal attention), so one batched call does all of them.
    L = cfg.seq_len
    where = [(b, np.flatnonzero(batch.segment_ids_bl[b] == s))
             for b in range(batch.tokens_bl.shape[0]) for s in range(1, batch.segment_ids_bl[b].max() + 1)]
    alone_tokens = np.full((len(where), L), tok.pad_id, np.int32)
    for k, (b, idx) in enumerate(where):
        alone_tokens[k, : len(idx)] = batch.tokens_bl[b, idx]
    positions = np.broadcast_to(np.arange(L, dtype=np.int32), alone_tokens.shape)
    alone_btd = np.asarray(forward(alone_tokens, positions, np.ones_like(alone_tokens)), np.float64)
    for k, (b, idx) in enumerate(where):
        np.testing.assert_allclose(packed_btd[b, idx], alone_btd[k, : len(idx)], atol=2e-5, rtol=2e-5)

    # The check can fail: with one segment id per row, later examples attend to earlier ones.
    mixed_btd = np.asarray(forward(batch.tokens_bl, batch.positions_bl, np.ones_like(batch.tokens_bl)))
    second = batch.segment_ids_bl[0] == 2
    assert np.abs(mixed_btd[0][second] - packed_btd[0][second]).max() > 1e-3
