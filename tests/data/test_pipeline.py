"""grain pipelines: prompt batches, sharding across simulated processes, exact resume, SFT loss
masks, packing and truncation."""

import json

import numpy as np
import pytest

from r1jax.data import procedural, readers, templates
from r1jax.data.pipeline import (
    PromptPipelineConfig,
    SFTPipelineConfig,
    make_prompt_dataset,
    make_sft_dataset,
)
from r1jax.data.readers import DataError
from r1jax.data.tokenizer import SentencePieceTokenizer

N = 37  # not a multiple of any batch or process count used here


@pytest.fixture(scope="module")
def examples():
    cfgs = [procedural.ProceduralConfig(t, N, difficulty=2) for t in ("arithmetic", "countdown")]
    return [procedural.generate(c, i) for c in cfgs for i in range(N)]


@pytest.fixture(scope="module")
def tok(examples):
    corpus = [e["question"] for e in examples] + [templates.R1_ZERO, templates.R1_READABLE] * 3
    return SentencePieceTokenizer.train(corpus, vocab_size=400)


@pytest.fixture(scope="module")
def sft_examples(examples):
    out = []
    for k, e in enumerate(examples):
        reasoning = " ".join(["let me think"] * (k % 7))  # lengths vary, so packing has work to do
        out.append(dict(e, response=templates.format_r1_response(reasoning, f"The answer is {e['answer']}.")))
    return out


def _take(it, n):
    return [next(it) for _ in range(n)]


def _ids(batch):
    return [e["id"] for e in batch.examples]


def test_prompt_batch_layout(examples, tok):
    cfg = PromptPipelineConfig(batch_size=5, max_prompt_len=400, template="r1_zero")
    ds, stats = make_prompt_dataset(examples, tok, cfg, 0, 1)
    assert (stats.total, stats.kept, stats.shard_size) == (2 * N, 2 * N, 2 * N)
    batch = next(iter(ds))
    assert batch.tokens_bp.shape == (5, 400) and batch.tokens_bp.dtype == np.int32
    assert batch.lens_b.dtype == np.int32
    for row, length, ex in zip(batch.tokens_bp, batch.lens_b, batch.examples):
        assert tok.decode(row[:length]) == templates.render_prompt("r1_zero", ex["question"])
        assert (row[length:] == tok.pad_id).all()


def test_buckets(examples, tok):
    cfg = PromptPipelineConfig(batch_size=4, max_prompt_len=400, buckets=(100, 200, 300, 400))
    for batch in _take(iter(make_prompt_dataset(examples, tok, cfg, 0, 1)[0]), 6):
        fits = [b for b in cfg.buckets if b >= batch.lens_b.max()]
        assert batch.tokens_bp.shape[1] == min(fits)
    with pytest.raises(ValueError, match="largest bucket must equal max_prompt_len"):
        PromptPipelineConfig(batch_size=4, max_prompt_len=400, buckets=(100, 200))


@pytest.mark.parametrize("n_proc", [1, 3, 4])
def test_processes_see_disjoint_shards_covering_the_data(examples, tok, n_proc):
    cfg = PromptPipelineConfig(batch_size=4, max_prompt_len=400, num_epochs=1, drop_remainder=False)
    seen = []
    for p in range(n_proc):
        ds, stats = make_prompt_dataset(examples, tok, cfg, p, n_proc)
        ids = [i for batch in ds for i in _ids(batch)]
        assert len(ids) == stats.shard_size
        seen.append(set(ids))
    assert sum(len(s) for s in seen) == len(examples)  # disjoint ...
    assert set().union(*seen) == {e["id"] for e in examples}  # ... and covering


def test_shuffle_seed_and_epochs(examples, tok):
    cfg = PromptPipelineConfig(batch_size=2 * N, max_prompt_len=400, seed=3)
    epoch1, epoch2 = (_ids(b) for b in _take(iter(make_prompt_dataset(examples, tok, cfg, 0, 1)[0]), 2))
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2  # every epoch is a new permutation
    other = PromptPipelineConfig(batch_size=2 * N, max_prompt_len=400, seed=4)
    assert _ids(next(iter(make_prompt_dataset(examples, tok, other, 0, 1)[0]))) != epoch1


def test_prompt_iterator_resumes_mid_epoch(examples, tok):
    cfg = PromptPipelineConfig(batch_size=4, max_prompt_len=400, seed=7)
    it = iter(make_prompt_dataset(examples, tok, cfg, 1, 2)[0])
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # JSON-able: saved with the model checkpoint
    expected = _take(it, 12)  # runs across the epoch boundary (18 prompts per shard)
    # A fresh pipeline (a restarted process) restored from the state yields the identical batches.
    fresh = iter(make_prompt_dataset(examples, tok, cfg, 1, 2)[0])
    fresh.set_state(state)
    for want, got in zip(expected, _take(fresh, 12)):
        np.testing.assert_array_equal(want.tokens_bp, got.tokens_bp)
        np.testing.assert_array_equal(want.lens_b, got.lens_b)
        assert _ids(want) == _ids(got)


def test_overlong_prompt_reported_with_file_and_row(tmp_path, tok, caplog):
    rows = [{"question": "What is 1 + 1?", "answer": "2"}, {"question": "long " * 300, "answer": "1"},
            {"question": "What is 2 + 2?", "answer": "4"}]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    examples, _ = readers.read_jsonl(path)
    fail = PromptPipelineConfig(batch_size=1, max_prompt_len=300)
    with pytest.raises(DataError, match=f"^{path}:2: prompt of example 'q-2' is .* over max_prompt_len=300"):
        make_prompt_dataset(examples, tok, fail, 0, 1)
    skip = PromptPipelineConfig(batch_size=1, max_prompt_len=300, on_error="skip", num_epochs=1)
    ds, stats = make_prompt_dataset(examples, tok, skip, 0, 1)
    assert (stats.kept, stats.skipped_overlong) == (2, 1) and stats.errors[0].startswith(f"{path}:2:")
    assert sorted(i for b in ds for i in _ids(b)) == ["q-1", "q-3"]
    assert any("skipping over-long prompt" in r.message for r in caplog.records)
    with pytest.raises(DataError, match="<examples>:1: example 'b' has no text field 'question'"):
        make_prompt_dataset([{"id": "a", "question": "q"}, {"id": "b"}], tok, skip, 0, 1)


# ---------------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------------


def _segments(batch):
    """(tokens, loss_mask, positions) of every packed segment, in order."""
    out = []
    for b in range(batch.tokens_bl.shape[0]):
        seg = batch.segment_ids_bl[b]
        for s in range(1, seg.max() + 1):
            idx = np.flatnonzero(seg == s)
            assert (np.diff(idx) == 1).all()  # a segment is contiguous
            out.append((batch.tokens_bl[b, idx], batch.loss_mask_bl[b, idx], batch.positions_bl[b, idx]))
    return out


@pytest.mark.parametrize("pack", [True, False])
def test_sft_loss_mask_is_exactly_the_response(sft_examples, tok, pack):
    cfg = SFTPipelineConfig(batch_size=4, seq_len=1024, template="r1", shuffle=False, pack=pack)
    ds, stats = make_sft_dataset(sft_examples, tok, cfg, 0, 1)
    batches = list(ds)
    segments = [s for b in batches for s in _segments(b)]
    assert len(segments) == len(sft_examples) and stats.truncated == stats.skipped == 0
    if pack:
        assert sum(b.tokens_bl.shape[0] for b in batches) < len(sft_examples) / 2  # several per row
    # Unshuffled first-fit packing keeps the order within a row; match segments back by content.
    by_prompt = {}
    for ex in sft_examples:
        prompt, response = templates.render_example("r1", ex["question"], ex["response"])
        by_prompt[prompt] = response
    for tokens, mask, positions in segments:
        np.testing.assert_array_equal(positions, np.arange(len(tokens)))  # restart per segment
        assert mask.min() == 0 and (np.diff(mask) >= 0).all()  # prompt part, then response part
        prompt = tok.decode(tokens[mask == 0])
        response_ids = tokens[mask == 1]
        assert response_ids[-1] == tok.eos_id  # the model is trained to stop
        assert tok.decode(response_ids[:-1]) == by_prompt.pop(prompt)
    assert not by_prompt
    for b in batches:
        pad = b.segment_ids_bl == 0
        assert (b.tokens_bl[pad] == tok.pad_id).all() and (b.loss_mask_bl[pad] == 0).all()


def test_sft_truncation_policies(sft_examples, tok, tmp_path):
    lengths = []
    for ex in sft_examples[:8]:
        p, r = templates.render_example("r1", ex["question"], ex["response"])
        lengths.append((len(tok.encode(p)), len(tok.encode(r)) + 1))
    # every prompt fits; long responses do not
    seq_len = max(p for p, _ in lengths) + sorted(r for _, r in lengths)[4]
    n_long = sum(p + r > seq_len for p, r in lengths)
    assert 0 < n_long < 8
    base = dict(batch_size=2, seq_len=seq_len, template="r1", shuffle=False, pack=False)

    cfg = SFTPipelineConfig(**base, truncation="truncate")
    ds, stats = make_sft_dataset(sft_examples[:8], tok, cfg, 0, 1)
    segments = [s for b in ds for s in _segments(b)]
    assert len(segments) == 8 and stats.truncated == n_long and stats.skipped == 0
    for (tokens, mask, _), (p, r) in zip(segments, lengths):
        assert len(tokens) == min(p + r, seq_len) and mask.sum() == min(r, seq_len - p)

    ds, stats = make_sft_dataset(sft_examples[:8], tok, SFTPipelineConfig(**base, truncation="skip"), 0, 1)
    assert sum(len(_segments(b)) for b in ds) == 8 - n_long and stats.skipped == n_long

    bad = [dict(ex, meta={"source": f"{tmp_path}/sft.jsonl:{k + 1}"})
           for k, ex in enumerate(sft_examples[:8])]
    first_long = next(k for k, (p, r) in enumerate(lengths) if p + r > seq_len)
    ds, _ = make_sft_dataset(bad, tok, SFTPipelineConfig(**base, truncation="fail"), 0, 1)
    with pytest.raises(DataError, match=f"sft.jsonl:{first_long + 1}: SFT example .* over seq_len={seq_len}"):
        list(ds)
    ds, _ = make_sft_dataset([{"id": "x", "question": "q"}], tok, SFTPipelineConfig(**base), 0, 1)
    with pytest.raises(DataError, match=r"<examples>:0: SFT example 'x' has no text field 'response'"):
        list(ds)


def test_sft_iterator_resumes_and_shards(sft_examples, tok):
    cfg = SFTPipelineConfig(batch_size=3, seq_len=1024, template="r1", num_epochs=None, seed=1)
    it = iter(make_sft_dataset(sft_examples, tok, cfg, 0, 2)[0])
    _take(it, 4)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 6)
    fresh = iter(make_sft_dataset(sft_examples, tok, cfg, 0, 2)[0])
    fresh.set_state(state)
    for want, got in zip(expected, _take(fresh, 6)):
        for name in ("tokens_bl", "loss_mask_bl", "segment_ids_bl", "positions_bl"):
            np.testing.assert_array_equal(getattr(want, name), getattr(got, name))
    # Two processes: disjoint shards covering all examples in one epoch.
    one = SFTPipelineConfig(batch_size=3, seq_len=1024, template="r1", num_epochs=1)
    prompts = []
    for p in range(2):
        ds, _ = make_sft_dataset(sft_examples, tok, one, p, 2)
        prompts.append([tok.decode(t[m == 0]) for b in ds for t, m, _ in _segments(b)])
    assert len(prompts[0]) + len(prompts[1]) == len(sft_examples)
    want = {templates.render_prompt("r1", e["question"]) for e in sft_examples}
    assert set(prompts[0]) | set(prompts[1]) == want and not set(prompts[0]) & set(prompts[1])
