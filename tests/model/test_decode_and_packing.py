"""KV-cache decoding equals the full forward at every position (GQA and MLA), with right-padded
ragged prompts; packed segments are isolated (a packed forward equals separate forwards)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import r1jax.model as M

# the tiny variants with larger weights, so attention is far from uniform and mistakes show
VARIANTS = {
    "gqa": dataclasses.replace(M.get_variant("tiny_dense"), init_std=0.2),
    "mla": dataclasses.replace(M.get_variant("tiny_moe"), init_std=0.2, n_mtp=0),
}
# cache attention in blocks (the tests' caches hold 16 slots, positions reach 11): 5 slots = three blocks
# read; 9 slots = a second block read from slot 7, overlapping the first; and one dense pass. All must
# equal the full forward.
VARIANTS |= {
    "gqa_block5": dataclasses.replace(VARIANTS["gqa"], attention_block=5),
    "gqa_block9": dataclasses.replace(VARIANTS["gqa"], attention_block=9),
    "mla_block9": dataclasses.replace(VARIANTS["mla"], attention_block=9),
    "gqa_dense": dataclasses.replace(VARIANTS["gqa"], attention_block=0),
}
B, T = 3, 12  # every forward call uses this shape, so each variant compiles the forward once


def _one_segment(tokens):
    return jnp.ones(tokens.shape, jnp.int32)  # a single segment: plain causal attention


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def model_fns(request):
    cfg = VARIANTS[request.param]
    graphdef, state = nnx.split(M.Transformer(cfg, rngs=nnx.Rngs(1)))

    @jax.jit
    def forward(tokens_bt, positions_bt, segment_ids_bt):
        model = nnx.merge(graphdef, state)
        h, _, aux = model(tokens_bt, positions_bt, segment_ids_bt)
        return model.logits(h), aux

    @jax.jit
    def step(tokens_bt, positions_bt, cache):
        model = nnx.merge(graphdef, state)
        h, cache, _ = model(tokens_bt, positions_bt, cache=cache)
        return model.logits(h), cache

    def init_cache(batch, max_len):
        return nnx.merge(graphdef, state).init_cache(batch, max_len)

    return cfg, forward, step, init_cache


def test_decode_matches_full_forward_with_ragged_prompts(model_fns):
    cfg, forward, step, init_cache = model_fns
    b, total, pad_to, max_len = B, T, 8, 16
    prompt_lens = np.array([5, 2, 8])
    tokens = np.random.RandomState(0).randint(1, cfg.vocab_size, (b, total))
    positions = jnp.broadcast_to(jnp.arange(total), (b, total))
    ref, _ = forward(jnp.asarray(tokens), positions, _one_segment(tokens))
    ref = np.asarray(ref)

    # prefill: rows right-padded to pad_to with junk (token 0) past their prompt
    prompt = np.where(np.arange(pad_to)[None] < prompt_lens[:, None], tokens[:, :pad_to], 0)
    logits, cache = step(jnp.asarray(prompt), jnp.broadcast_to(jnp.arange(pad_to), (b, pad_to)),
                         init_cache(b, max_len))
    logits = np.asarray(logits)
    scale = np.abs(ref).max()
    for r in range(b):
        np.testing.assert_allclose(logits[r, : prompt_lens[r]], ref[r, : prompt_lens[r]], atol=2e-5 * scale)
    # decode: row r continues from its own prompt length; the junk slots get overwritten first
    pos = prompt_lens.copy()
    n_checked = 0
    while (pos < total).any():
        p = np.minimum(pos, total - 1)
        logits, cache = step(jnp.asarray(tokens[np.arange(b), p][:, None]), jnp.asarray(p[:, None]), cache)
        for r in range(b):
            if pos[r] < total:
                np.testing.assert_allclose(np.asarray(logits)[r, 0], ref[r, pos[r]], atol=2e-5 * scale,
                                           err_msg=f"row {r} position {pos[r]}")
                n_checked += 1
        pos += 1
    assert n_checked == (total - prompt_lens).sum()


def test_cache_has_the_contract_layout(model_fns):
    cfg, _, _, init_cache = model_fns
    cache = init_cache(2, 7)
    assert len(cache) == cfg.n_layers
    if cfg.attention == "mla":
        assert cache[0]["c_kv"].shape == (2, 7, cfg.kv_lora_rank)
        assert cache[0]["k_rope"].shape == (2, 7, cfg.qk_rope_head_dim)
    else:
        assert cache[0]["k"].shape == cache[0]["v"].shape == (2, 7, cfg.n_kv_heads, cfg.d_head)


def test_packed_forward_equals_separate_forwards(model_fns):
    cfg, forward, _, _ = model_fns
    rs = np.random.RandomState(2)
    lens = [5, 4, 2]  # three documents, then 1 padding token (segment 0)
    docs = [rs.randint(1, cfg.vocab_size, n) for n in lens]
    row = np.concatenate(docs + [np.zeros(1, int)])
    segs = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lens)] + [np.zeros(1, int)])
    positions = np.concatenate([np.arange(n) for n in lens] + [np.zeros(1, int)])
    # row 1: the same pack with the first document replaced (isolation can fail here)
    row2 = row.copy()
    row2[: lens[0]] = rs.randint(1, cfg.vocab_size, lens[0])
    tokens = np.stack([row, row2, row])
    packed, aux = forward(jnp.asarray(tokens), jnp.asarray(np.stack([positions] * B)),
                          jnp.asarray(np.stack([segs] * B)))
    packed = np.asarray(packed)
    assert np.isfinite(packed).all()  # the padding token sees no segment but stays finite

    # separate forwards: each document alone at the start of a row (causal: the tail is irrelevant)
    alone_tokens = np.zeros((B, T), int)
    for i, doc in enumerate(docs):
        alone_tokens[i, : len(doc)] = doc
    alone, _ = forward(jnp.asarray(alone_tokens), jnp.broadcast_to(jnp.arange(T), (B, T)),
                       _one_segment(alone_tokens))
    alone = np.asarray(alone)
    start = 0
    for i, doc in enumerate(docs):
        np.testing.assert_allclose(packed[0, start:start + len(doc)], alone[i, : len(doc)],
                                   atol=2e-5 * np.abs(alone).max(), err_msg=f"document {i}")
        start += len(doc)
    np.testing.assert_allclose(packed[1, lens[0]:-1], packed[0, lens[0]:-1], atol=1e-6 * np.abs(packed).max())
    assert np.abs(packed[1, : lens[0]] - packed[0, : lens[0]]).max() > 1e-3
    if cfg.is_moe:  # padding (segment 0) is not counted in the expert load
        assert np.allclose(np.asarray(aux.expert_load_le).sum(-1), 1.0)
