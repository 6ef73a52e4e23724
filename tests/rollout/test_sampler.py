"""The sampler against full forwards of the model without a cache (tiny_dense, float32)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from rollout_reference import log_softmax64, reference_probs

from r1jax.model import Transformer, get_variant
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.rollout import FINISH_LENGTH, FINISH_STOP, Sampler, SamplingParams
from r1jax.rollout.weight_sync import reshard

CFG = dataclasses.replace(get_variant("tiny_dense"), tie_word_embeddings=False)  # untied: varied greedy text
PAD = 0
PROMPTS = np.array(
    [
        [5, 6, 7, 8, 9, 3, 3],
        [9, 10, PAD, PAD, PAD, PAD, PAD],
        [1, 2, 3, 4, 5, 6, 7],
        [200, 100, 50, PAD, PAD, PAD, PAD],
    ]
)
LENS = np.array([5, 2, 7, 3])
G, MAX_NEW = 2, 12
TEMPERATURE, TOP_P = 0.8, 0.9  # greedy runs share the compiled program: T and top_p are runtime values


class CharTokenizer:
    """256 context-free pieces over a small alphabet, so stop strings occur and straddle tokens."""

    def __init__(self):
        rng = np.random.default_rng(0)
        alphabet = list("ab</> x")
        self.pieces = ["<pad>", "<eos>"] + alphabet
        while len(self.pieces) < CFG.vocab_size:
            self.pieces.append("".join(rng.choice(alphabet, rng.integers(2, 4))))
        self.vocab_size, self.bos_id, self.eos_id, self.pad_id = CFG.vocab_size, None, 1, PAD

    def encode(self, text):
        return [self.pieces.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


@pytest.fixture(scope="module")
def model():
    return nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def forward(model):
    graphdef, state = model
    full = jax.jit(
        lambda st, tokens_nl: nnx.merge(graphdef, st).logits(
            nnx.merge(graphdef, st)(
                tokens_nl, jnp.broadcast_to(jnp.arange(tokens_nl.shape[1]), tokens_nl.shape)
            )[0]
        )
    )
    return lambda tokens_nl: np.asarray(full(state, jnp.asarray(tokens_nl)))


@pytest.fixture(scope="module")
def sampler(model):
    return Sampler(model[0], pad_id=PAD)


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer()


def params(**kw):
    return SamplingParams(**{**dict(temperature=TEMPERATURE, top_p=TOP_P, max_new_tokens=MAX_NEW, n=G), **kw})


@pytest.fixture(scope="module")
def sampled(model, sampler, tok):
    return jax.device_get(
        sampler.generate(model[1], PROMPTS, LENS, params(), jax.random.key(1), tokenizer=tok)
    )


def completion(r, row):
    start = r.prompt_lens_b[row]
    return [int(t) for t in r.tokens_bl[row, start : start + r.completion_lens_b[row]]]


def check_layout(r, prompts=PROMPTS, lens=LENS, n=G):
    """Prompt, completion, then pad; mask and log-probs exactly on the completion."""
    rows, length = r.tokens_bl.shape
    for row in range(rows):
        p, c = lens[row // n], r.completion_lens_b[row]
        assert r.prompt_lens_b[row] == p
        np.testing.assert_array_equal(r.tokens_bl[row, :p], prompts[row // n, :p])
        np.testing.assert_array_equal(r.tokens_bl[row, p + c :], PAD)
        mask = np.zeros(length, np.float32)
        mask[p : p + c] = 1
        np.testing.assert_array_equal(r.completion_mask_bl[row], mask)
        for name in ("logp_sampling_bl", "logp_policy_bl"):
            assert np.all(getattr(r, name)[row][mask == 0] == 0), name
        assert np.all(r.logp_policy_bl[row][mask == 1] < 0)


def test_greedy_equals_argmax_of_repeated_full_forwards(model, sampler, forward):
    r = jax.device_get(sampler.generate(model[1], PROMPTS, LENS, params(temperature=0.0), jax.random.key(0)))
    check_layout(r)
    rows, length = r.tokens_bl.shape
    lens_n = np.repeat(LENS, G)
    ref = np.full((rows, length), PAD, np.int32)
    for row in range(rows):
        ref[row, : lens_n[row]] = PROMPTS[row // G, : lens_n[row]]
    for k in range(MAX_NEW):  # one full forward (no cache) per new token, argmax at the last position
        logits = forward(ref)
        for row in range(rows):
            ref[row, lens_n[row] + k] = np.argmax(logits[row, lens_n[row] + k - 1])
    np.testing.assert_array_equal(r.completion_lens_b, MAX_NEW)
    np.testing.assert_array_equal(r.finish_reason_b, FINISH_LENGTH)
    np.testing.assert_array_equal(r.tokens_bl, ref)
    assert len({tuple(completion(r, row)) for row in range(rows)}) > 1  # not a degenerate model
    np.testing.assert_array_equal(r.logp_sampling_bl, 0.0)


def test_logprobs_equal_full_forward(sampled, forward):
    """The sampler/trainer mismatch: returned log-probs vs a full forward of the returned tokens."""
    check_layout(sampled)
    logits = forward(sampled.tokens_bl)
    mask = sampled.completion_mask_bl == 1
    ref_policy = np.zeros(mask.shape)
    ref_sampling = np.zeros(mask.shape)
    for row, t in zip(*np.nonzero(mask)):
        token = sampled.tokens_bl[row, t]
        ref_policy[row, t] = log_softmax64(logits[row, t - 1])[token]
        probs = reference_probs(logits[row, t - 1], TEMPERATURE, TOP_P)
        assert probs[token] > 0, "sampled a token outside the top-p support"
        ref_sampling[row, t] = np.log(probs[token])
    diff_policy = np.abs(sampled.logp_policy_bl - ref_policy)[mask]
    diff_sampling = np.abs(sampled.logp_sampling_bl - ref_sampling)[mask]
    print(
        f"\nlog-prob mismatch vs full forward (float32, {mask.sum()} tokens): "
        f"policy max {diff_policy.max():.2e} mean {diff_policy.mean():.2e}; "
        f"sampling max {diff_sampling.max():.2e} mean {diff_sampling.mean():.2e}"
    )
    assert diff_policy.max() < 1e-4 and diff_sampling.max() < 1e-4


def test_deterministic_per_rng_and_g_samples_differ(model, sampler, tok, sampled):
    key = jax.random.key(1)
    with jax.transfer_guard("disallow"):  # no implicit host/device copies inside the sampler
        again = sampler.generate(model[1], PROMPTS, LENS, params(), key, tokenizer=tok)
    again = jax.device_get(again)
    np.testing.assert_array_equal(again.tokens_bl, sampled.tokens_bl)
    np.testing.assert_array_equal(again.logp_sampling_bl, sampled.logp_sampling_bl)
    other = jax.device_get(sampler.generate(model[1], PROMPTS, LENS, params(), jax.random.key(2)))
    assert (other.tokens_bl != sampled.tokens_bl).any()
    assert any(completion(sampled, 2 * i) != completion(sampled, 2 * i + 1) for i in range(len(LENS)))
    assert len(sampler._programs) == 1  # greedy, sampled, other rng and stop settings share one program


def test_stops_end_generation_at_the_right_place(model, sampler, tok, sampled):
    """Re-run with the same rng and stop conditions taken from the unstopped completions: every row
    must be the unstopped completion cut right after the first token that completes a condition."""
    c0, c1, c2 = completion(sampled, 0), completion(sampled, 3), completion(sampled, 5)
    stop_id = c0[6]
    stop_seq = (c2[3], c2[4])
    text1 = tok.decode(c1)
    stop_str = text1[len(tok.decode(c1[:4])) - 1 :][:3]  # straddles tokens 3 and 4 of row 3
    p = params(stop_token_ids=(stop_id,), stop_sequences=(stop_seq,), stop_strings=(stop_str,))
    r = jax.device_get(sampler.generate(model[1], PROMPTS, LENS, p, jax.random.key(1), tokenizer=tok))
    check_layout(r)
    n_stopped = 0
    for row in range(r.tokens_bl.shape[0]):
        full = completion(sampled, row)
        cut = next(
            (
                k
                for k in range(1, len(full) + 1)
                if full[k - 1] == stop_id
                or tuple(full[max(0, k - 2) : k]) == stop_seq
                or stop_str in tok.decode(full[:k])
            ),
            None,
        )
        if cut is None:
            assert r.finish_reason_b[row] == FINISH_LENGTH and completion(r, row) == full
            assert r.texts[row] == tok.decode(full)
        else:
            n_stopped += 1
            assert r.finish_reason_b[row] == FINISH_STOP, row
            assert completion(r, row) == full[:cut], row
            text = tok.decode(full[: cut - 1] if full[cut - 1] == stop_id else full[:cut])  # EOS not decoded
            if stop_str in text:
                assert r.texts[row] == text[: text.index(stop_str) + len(stop_str)]
            else:
                assert r.texts[row] == text
        np.testing.assert_array_equal(
            r.logp_policy_bl[row][r.completion_mask_bl[row] == 1],
            sampled.logp_policy_bl[row][r.completion_mask_bl[row] == 1],
        )
    assert n_stopped >= 3 and r.finish_reason_b[0] == FINISH_STOP and r.finish_reason_b[3] == FINISH_STOP


def test_eos_at_first_token_and_max_new_tokens_one(model, sampler, sampled):
    first = [completion(sampled, row)[0] for row in range(len(LENS) * G)]
    r = jax.device_get(
        sampler.generate(model[1], PROMPTS, LENS, params(stop_token_ids=(first[0],)), jax.random.key(1))
    )
    assert completion(r, 0) == [first[0]] and r.finish_reason_b[0] == FINISH_STOP
    r = jax.device_get(sampler.generate(model[1], PROMPTS, LENS, params(max_new_tokens=1), jax.random.key(1)))
    np.testing.assert_array_equal(r.completion_lens_b, 1)
    np.testing.assert_array_equal(r.finish_reason_b, FINISH_LENGTH)
    assert [completion(r, row)[0] for row in range(len(first))] == first


def test_sharded_8_devices_equals_one_device(model, sampled, tok):
    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    state = reshard(model[1], mesh)
    key = jax.random.key(1)
    with jax.transfer_guard("disallow"):
        r = Sampler(model[0], mesh=mesh, pad_id=PAD).generate(
            state, PROMPTS, LENS, params(), key, tokenizer=tok
        )
    assert len(r.tokens_bl.sharding.device_set) == 8 and not r.tokens_bl.sharding.is_fully_replicated
    r = jax.device_get(r)
    np.testing.assert_array_equal(r.tokens_bl, sampled.tokens_bl)
    np.testing.assert_array_equal(r.finish_reason_b, sampled.finish_reason_b)
    np.testing.assert_allclose(r.logp_policy_bl, sampled.logp_policy_bl, atol=1e-5)
    np.testing.assert_allclose(r.logp_sampling_bl, sampled.logp_sampling_bl, atol=1e-5)
    assert r.texts == sampled.texts


@pytest.mark.parametrize(
    "prompts,lens,kw,match",
    [
        (PROMPTS, np.array([5, 0, 7, 3]), {}, "prompt row 1 is empty"),
        (PROMPTS, np.array([5, 2, 8, 3]), {}, r"prompt_lens_b\[2\] = 8 exceeds"),
        (PROMPTS, LENS, dict(max_new_tokens=600), "prompt row 2 has 7 tokens.*cache length 512"),
        (np.where(PROMPTS == 200, 256, PROMPTS), LENS, {}, "row 3, position 0: token id 256"),
        (PROMPTS[:, :, None], LENS, {}, "2-D integer array"),
        (PROMPTS, LENS[:3], {}, "prompt_lens_b must be integers of shape"),
    ],
)
def test_bad_input_fails_before_compilation(model, prompts, lens, kw, match):
    fresh = Sampler(model[0], pad_id=PAD)
    with pytest.raises(ValueError, match=match):
        fresh.generate(model[1], prompts, lens, params(**kw), jax.random.key(0))
    assert not fresh._programs


def test_cache_limit_from_sampler(model):
    fresh = Sampler(model[0], pad_id=PAD, max_cache_len=16)
    with pytest.raises(ValueError, match="cache length 16"):
        fresh.generate(model[1], PROMPTS, LENS, params(max_new_tokens=10), jax.random.key(0))
    with pytest.raises(ValueError, match="need a tokenizer"):
        fresh.generate(
            model[1], PROMPTS, LENS, params(max_new_tokens=4, stop_strings=("x",)), jax.random.key(0)
        )
    assert not fresh._programs


def test_decode_loop_stays_on_device(model, sampler):
    """One program: the decode loop is an XLA while loop with no host callback or transfer inside."""
    hlo = sampler.lower(model[1], PROMPTS, LENS, params(), jax.random.key(1)).as_text()
    assert "stablehlo.while" in hlo
    for host_op in ("callback", "send", "recv", "outfeed", "infeed"):
        assert host_op not in hlo.lower(), host_op
    assert len(sampler._programs) == 1  # lowering reused the cached program of the other tests


def test_compaction_changes_nothing_but_the_batch_width(model, sampled):
    """Halving the decode batch as rows finish (8 -> 4 -> 2 rows here) gives the same rollout as
    decoding all rows to the end: each row's draws are keyed by its row id, not its batch slot."""
    rows = sampled.tokens_bl.shape[0]
    stops = []  # stop tokens that end most rows, at different steps (greedy cover of the rows)
    while len(stops) < 4:
        ended = {r for r in range(rows) if set(completion(sampled, r)[:MAX_NEW - 1]) & set(stops)}
        gain = {t: len({r for r in range(rows) if r not in ended and t in completion(sampled, r)[1 : MAX_NEW - 1]})
                for r in range(rows) for t in completion(sampled, r)}
        stops.append(max(gain, key=gain.get))
    sp = params(stop_token_ids=tuple(stops))
    key = jax.random.key(1)
    plain = jax.device_get(Sampler(model[0], pad_id=PAD, compaction_levels=0).generate(model[1], PROMPTS, LENS,
                                                                                        sp, key))
    compact = jax.device_get(Sampler(model[0], pad_id=PAD).generate(model[1], PROMPTS, LENS, sp, key))
    lens = np.sort(plain.completion_lens_b)
    assert lens[-5] < lens[-1] and lens[-3] < lens[-1], lens  # 4, then 2 rows were left: both stages ran
    check_layout(compact)
    for name in ("tokens_bl", "completion_lens_b", "finish_reason_b", "completion_mask_bl"):
        np.testing.assert_array_equal(getattr(compact, name), getattr(plain, name), err_msg=name)
    for name in ("logp_sampling_bl", "logp_policy_bl"):
        np.testing.assert_allclose(getattr(compact, name), getattr(plain, name), atol=1e-5, err_msg=name)


def test_compaction_widths_keep_shards_even():
    from r1jax.rollout.sampler import compaction_widths

    assert compaction_widths(64, 2) == (64, 32, 16)
    assert compaction_widths(64, 0) == (64,)
    assert compaction_widths(12, 3) == (12, 6, 3)
    assert compaction_widths(8, 3, shards=4) == (8, 4)  # 4 shards: never fewer rows than shards
    assert compaction_widths(6, 2, shards=4) == (6,)
