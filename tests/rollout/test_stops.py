"""Stop automata == brute force: the first token at which the decoded completion contains a stop string
(or ends with a stop token sequence), over many tokenisations of the same text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from r1jax.data import templates
from r1jax.data.tokenizer import HFTokenizer, SentencePieceTokenizer
from r1jax.rollout import stops
from r1jax.rollout.types import SamplingParams

STOP_STRINGS = ("</answer>", "\n\nUser:", "##")
ADVANCE = jax.jit(stops.advance)


class PieceTokenizer:
    """Token i decodes to PIECES[i], context-free: the reference is plain string search."""

    PIECES = [
        "<",
        "/",
        "ans",
        "wer",
        ">",
        "</",
        "answer",
        "</answer>",
        "r>\n",
        "a",
        "b",
        " ",
        "\n",
        "User",
        ":",
        "#",
        "##",
        "x#",
        "</ans",
        "wer>x",
        "\n\n",
        "<pad>",
    ]
    vocab_size = len(PIECES)
    bos_id, eos_id, pad_id = None, 21, 21

    def encode(self, text):
        return [self.PIECES.index(text)] if text in self.PIECES else []

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids)


@pytest.fixture(scope="module")
def hf_tok():
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([templates.R1_ZERO, "<answer> 42 </answer>\n\nUser: ## x"] * 10, trainer)
    return HFTokenizer(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def sp_tok():
    corpus = [templates.R1_ZERO] * 4 + ["<answer> 42 </answer> ## x\n\nUser: y"] * 4
    return SentencePieceTokenizer.train(corpus, vocab_size=400)


def first_hit_brute_force(tokenizer, ids, stop_strings):
    for t in range(len(ids)):
        text = tokenizer.decode(ids[: t + 1])
        if any(s in text for s in stop_strings):
            return t
    return None


def first_hit_device(tables, ids):
    states = jnp.zeros((len(tables), 1), jnp.int32)
    tables = tuple(jnp.asarray(t) for t in tables)
    for t, tok in enumerate(ids):
        states, hit = ADVANCE(tables, states, jnp.asarray([tok]))
        if bool(hit[0]):
            return t
    return None


def random_streams(tokenizer, n, rng):
    """Token streams from random chunks, each encoded separately, so a stop string is split across
    tokens in many ways (and sometimes sits inside a longer token)."""
    chunks = [
        "</",
        "ans",
        "wer",
        ">",
        "</answer>",
        "answer>",
        "<answer>",
        "\n",
        "\n\n",
        "User",
        ":",
        " ",
        "#",
        "##",
        "x",
        "42",
        "the",
        " think",
    ]
    out = []
    for _ in range(n):
        ids = []
        for _ in range(rng.integers(1, 14)):
            ids += tokenizer.encode(str(rng.choice(chunks)))
        out.append(ids)
    return out


def test_aho_corasick_brute_force():
    rng = np.random.default_rng(0)
    patterns = [(1, 2, 1), (2, 1), (3,), (1, 1, 1, 2)]
    delta, accept = stops.aho_corasick(patterns, 4)
    for _ in range(200):
        text = list(rng.integers(0, 4, rng.integers(1, 12)))
        state = 0
        for t, a in enumerate(text):
            state = delta[state, a]
            ends = any(tuple(text[max(0, t + 1 - len(p)) : t + 1]) == p for p in patterns)
            assert bool(accept[state]) == ends, (text, t)


def test_piece_tokenizer_all_splits():
    tok = PieceTokenizer()
    tables = stops.build_tables(SamplingParams(stop_strings=STOP_STRINGS), tok.vocab_size, tok)
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(150):
        ids = list(rng.integers(0, tok.vocab_size - 1, rng.integers(1, 12)))
        tail = [["</", "answer", ">"], ["</ans", "wer>x"], ["x#", "#"], ["\n", "\n", "User", ":"], ["a"]]
        ids += [tok.PIECES.index(p) for p in tail[rng.integers(len(tail))]]
        ref = first_hit_brute_force(tok, ids, STOP_STRINGS)
        hits += ref is not None
        assert first_hit_device(tables, ids) == ref, [tok.PIECES[i] for i in ids]
    assert hits > 50  # the streams really exercise the stop strings


@pytest.mark.parametrize("which", ["hf", "sp"])
def test_real_tokenizers(which, hf_tok, sp_tok):
    tok = hf_tok if which == "hf" else sp_tok
    tables = stops.build_tables(SamplingParams(stop_strings=STOP_STRINGS), tok.vocab_size, tok)
    rng = np.random.default_rng(2)
    hits = 0
    for ids in random_streams(tok, 60, rng):
        ref = first_hit_brute_force(tok, ids, STOP_STRINGS)
        hits += ref is not None
        assert first_hit_device(tables, ids) == ref, [tok.decode([i]) for i in ids]
    assert hits > 15


def test_stop_ids_and_sequences():
    vocab = 10
    params = SamplingParams(stop_token_ids=(9,), stop_sequences=((1, 2, 3), (2, 2)))
    tables = stops.build_tables(params, vocab)
    rng = np.random.default_rng(3)
    for _ in range(200):
        ids = [int(i) for i in rng.integers(0, vocab, 12)]
        ref = next(
            (
                t
                for t in range(len(ids))
                if ids[t] == 9
                or ids[max(0, t - 2) : t + 1] == [1, 2, 3]
                or ids[max(0, t - 1) : t + 1] == [2, 2]
            ),
            None,
        )
        assert first_hit_device(tables, ids) == ref, ids


def test_advance_is_batched_and_jittable():
    tables = tuple(jnp.asarray(t) for t in stops.build_tables(SamplingParams(stop_sequences=((1, 2),)), 5))
    fn = jax.jit(stops.advance)
    states = jnp.zeros((1, 3), jnp.int32)
    states, hit = fn(tables, states, jnp.asarray([1, 2, 1]))
    assert not hit.any()
    states, hit = fn(tables, states, jnp.asarray([2, 2, 1]))
    np.testing.assert_array_equal(hit, [True, False, False])


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="need a tokenizer"):
        stops.build_tables(SamplingParams(stop_strings=("x",)), 10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        stops.build_tables(SamplingParams(stop_token_ids=(10,)), 10)


def test_find_stop_string():
    assert stops.find_stop_string("a ## b </answer> c", STOP_STRINGS) == 4
    assert stops.find_stop_string("abc", STOP_STRINGS) is None
    assert stops.find_stop_string("x</answer>", STOP_STRINGS) == 10


class ByteTokenizer:
    """Byte-level pieces: 'é' (c3 a9) split over two tokens decodes to U+FFFD token by token."""

    PIECES = [b"<pad>", b"<eos>", b"a", b"b", b"\xc3", b"\xa9", b"x"]
    vocab_size, bos_id, eos_id, pad_id = len(PIECES), None, 1, 0

    def encode(self, text):
        return [self.PIECES.index(bytes([c])) for c in text.encode()]

    def decode(self, ids):
        return b"".join(self.PIECES[i] for i in ids).decode("utf-8", errors="replace")


def test_host_side_check_cuts_what_the_device_missed():
    """A non-ASCII stop string across partial UTF-8 tokens: the device automaton cannot see it, the
    host text check cuts tokens, mask, log-probs and texts at the first token that completes it."""
    from r1jax.rollout.sampler import _decode_texts
    from r1jax.rollout.types import FINISH_LENGTH, FINISH_STOP, Rollout

    tok = ByteTokenizer()
    sampling = SamplingParams(stop_strings=("é",), stop_token_ids=(1,))
    tables = stops.build_tables(sampling, tok.vocab_size, tok)
    completions = [[2, 4, 5, 3, 3], [2, 3, 1, 0, 0], [6, 6, 6, 6, 6]]  # "aéb b", "ab<eos>", "xxxxx"
    assert first_hit_device(tables, completions[0]) is None  # the device misses it (documented limit)
    lens = [5, 3, 5]
    tokens = np.array([[2] + c for c in completions], np.int32)
    mask = np.array([[0] + [1.0 if j < n else 0.0 for j in range(5)] for n in lens], np.float32)
    logp = -mask
    r = Rollout(tokens, np.ones(3, np.int32), np.array(lens, np.int32),
                np.array([FINISH_LENGTH, FINISH_STOP, FINISH_LENGTH], np.int32), mask, logp, logp)
    out = jax.device_get(_decode_texts(r, tok, sampling, pad_id=0))
    assert out.texts == ["aé", "ab", "xxxxx"]  # the EOS is not decoded into the text
    np.testing.assert_array_equal(out.completion_lens_b, [3, 3, 5])
    np.testing.assert_array_equal(out.finish_reason_b, [FINISH_STOP, FINISH_STOP, FINISH_LENGTH])
    np.testing.assert_array_equal(out.tokens_bl[0], [2, 2, 4, 5, 0, 0])
    np.testing.assert_array_equal(out.completion_mask_bl[0], [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out.logp_policy_bl[0], [0, -1, -1, -1, 0, 0])
    np.testing.assert_array_equal(out.tokens_bl[1:], tokens[1:])
