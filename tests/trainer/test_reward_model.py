"""Reward model: the Bradley–Terry loss and its gradient against float64 NumPy, the objective's
metrics and pair layout, the views (helpful = summary only, harmless = everything), row truncation,
and the scorer sharded over data=2 fsdp=2 tensor=2 equal to one device and to rows scored alone."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.data.templates import format_r1_response
from r1jax.model import create_sharded
from r1jax.model.config import get_variant
from r1jax.parallel.mesh import MeshConfig, make_mesh, single_device_mesh
from r1jax.trainer import reward_model as R
from r1jax.trainer.policy import Policy
from r1jax.trainer.state import split_model_state

# ── the loss ───────────────────────────────────────────────────────────────────────────────────


def _reference(r_c, r_r, w):
    m = r_c.astype(np.float64) - r_r.astype(np.float64)
    loss = np.sum(w * np.logaddexp(0.0, -m))  # -log σ(m), stable
    sig_neg = np.exp(-np.logaddexp(0.0, m))  # σ(-m)
    return loss, -w * sig_neg, w * sig_neg


def test_bradley_terry_loss_and_gradient_match_float64_numpy_at_any_margin():
    rng = np.random.default_rng(0)
    r_c = np.concatenate([rng.normal(size=12), [500.0, -500.0, 80.0, -80.0, 0.0, 1e4]]).astype(np.float32)
    r_r = np.concatenate([rng.normal(size=12), [-500.0, 500.0, 0.0, 0.0, 0.0, -1e4]]).astype(np.float32)
    raw = np.ones(len(r_c))
    raw[3] = 0.0  # a top-up pair: no weight
    w = (raw / raw.sum()).astype(np.float32)
    loss, (g_c, g_r) = jax.value_and_grad(R.bradley_terry_loss, argnums=(0, 1))(r_c, r_r, w)
    ref_loss, ref_gc, ref_gr = _reference(r_c, r_r, w.astype(np.float64))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(g_c)) and np.all(np.isfinite(g_r))
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_c), ref_gc, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.asarray(g_r), ref_gr, rtol=1e-5, atol=1e-9)
    # the margin -1000 pair costs its margin (no overflow to inf), +1000 costs ~0
    single = lambda c, r: float(R.bradley_terry_loss(jnp.float32([c]), jnp.float32([r]), jnp.float32([1.0])))
    assert single(-500.0, 500.0) == pytest.approx(1000.0) and single(500.0, -500.0) == 0.0


class _Stub:
    """A 'model' scoring a row by its first token: checks the pair layout and the metrics exactly."""

    def scores(self, tokens_bl, last_b):
        return tokens_bl[:, 0].astype(jnp.float32) + 0.0 * last_b, None


def test_objective_pairs_chosen_with_rejected_and_counts_ties_half():
    chosen = np.array([[3, 0], [1, 0], [2, 0], [9, 0]], np.int32)
    rejected = np.array([[1, 0], [2, 0], [2, 0], [0, 0]], np.int32)
    batch = R.PairBatch(chosen, rejected, np.zeros(4, np.int32), np.zeros(4, np.int32),
                        np.array([1, 1, 1, 0], np.float32))  # the last pair is a top-up
    objective = R.bradley_terry_objective()
    micro = objective.prepare(batch)
    r_c, r_r, _ = R.pair_scores(_Stub(), batch)
    np.testing.assert_array_equal(r_c, [3, 1, 2, 9])
    np.testing.assert_array_equal(r_r, [1, 2, 2, 0])
    loss, sums, _ = objective.loss(_Stub(), micro)
    metrics = objective.metrics(batch, sums)
    margins = np.array([2.0, -1.0, 0.0])
    assert float(loss) == pytest.approx(np.mean(np.logaddexp(0, -margins)), rel=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx((1 + 0 + 0.5) / 3)
    assert float(metrics["margin"]) == pytest.approx(margins.mean())
    assert float(metrics["pairs"]) == 3.0
    assert batch.loss_mask_bl.sum() == 6  # one token per row of the three real pairs


# ── what the reward model reads ─────────────────────────────────────────────────────────────────


class _CharTokenizer:
    """Bytes as ids (offset 3): enough to test rendering, truncation and scoring end to end."""

    pad_id, eos_id, bos_id, vocab_size = 0, 1, None, 128

    def encode(self, text):
        return [3 + (b % 125) for b in text.encode()]


SUMMARY = "So the answer is \\boxed{c b a}."


def test_helpful_view_is_the_summary_and_harmless_view_is_everything():
    a = format_r1_response("The task is: reverse the words a b c.", SUMMARY)
    b = format_r1_response("Completely different reasoning, what a stupid question!", SUMMARY)
    assert R.response_view("summary", a) == R.response_view("summary", b) == SUMMARY
    assert R.response_view("response", a) == a and R.response_view("response", b) == b
    tok = _CharTokenizer()
    enc = lambda view, resp: R.encode_scored(tok, "r1", view, "Reverse the words a b c", resp, 512)[0].tolist()
    assert enc("summary", a) == enc("summary", b)  # words in the reasoning never reach the helpful score
    assert enc("response", a) != enc("response", b)
    # a missing summary (second marker never written) and an empty one read as ""
    assert R.response_view("summary", "|special_token| reasoning only") == ""
    assert R.response_view("summary", format_r1_response("reasoning", "")) == ""
    assert enc("summary", "|special_token| reasoning only") == enc("summary", "|special_token| other |special_token|")
    # no marker at all: read like a chat completion, whole (as the accuracy reward reads it)
    assert R.response_view("summary", " just an answer ") == "just an answer"
    with pytest.raises(ValueError, match="view"):
        R.response_view("reasoning", a)


def test_long_rows_keep_the_question_and_both_ends_of_the_view_then_eos():
    tok = _CharTokenizer()
    question, response = "Q" * 40, format_r1_response("r" * 300, "S" * 30 + " END")
    decode = lambda ids: bytes(i - 3 for i in ids[:-1]).decode()
    ids, cut = R.encode_scored(tok, "chatml", "response", question, response, 200)
    assert cut and len(ids) == 200 and ids[-1] == tok.eos_id
    text = decode(ids)  # the prompt whole (90 characters), the view's first 55 and last 54
    assert text.startswith("<|im_start|>user\n" + "Q" * 40) and text.endswith("S" * 30 + " END")
    assert text.count("r") < 300
    short, cut = R.encode_scored(tok, "chatml", "summary", question, response, 200)
    assert not cut and decode(short).endswith("S" * 30 + " END")
    # a prompt too long for its half keeps its end (the question, then the assistant turn)
    ids, cut = R.encode_scored(tok, "chatml", "response", "Q" * 300, response, 200)
    text = decode(ids)
    assert cut and len(ids) == 200 and text.startswith("Q" * 60) and text.endswith(" END")


# ── the scorer on a mesh ────────────────────────────────────────────────────────────────────────


def _reward_model(mesh, params=None, model_state=None):
    cfg = dataclasses.replace(get_variant("tiny_dense"), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                              mlp_dim=128, vocab_size=128)
    graphdef, full = create_sharded(cfg, mesh, 0)
    policy = Policy(cfg, graphdef, *split_model_state(full), _CharTokenizer(), "test")
    rm = R.reward_policy(policy, mesh, head_init_std=0.5)
    if params is not None:  # the same values, placed on this mesh
        rm = dataclasses.replace(rm, params=jax.device_put(params, R.state_shardings(params, mesh)),
                                 model_state=jax.device_put(model_state, R.state_shardings(model_state, mesh)))
    record = {"view": "response", "template": "chatml", "max_len": 128, "buckets": [64, 128]}
    return R.RewardModel(cfg, rm.graphdef, rm.params, rm.model_state, _CharTokenizer(), record, mesh, batch_rows=8)


def test_sharded_scores_equal_one_device_and_rows_scored_alone():
    one = _reward_model(single_device_mesh())
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = _reward_model(mesh, jax.device_get(one.params), jax.device_get(one.model_state))
    assert sharded.row_buckets == (4, 8)  # 4 batch shards (data x fsdp), rows padded to a multiple
    rng = np.random.default_rng(0)
    questions = [f"Sort the numbers {' '.join(map(str, rng.integers(0, 50, size=3)))}" for _ in range(11)]
    responses = [format_r1_response("The task is: sort.", "x" * int(rng.integers(1, 90))) for _ in range(11)]
    s1 = one.score(questions, responses)
    s8 = sharded.score(questions, responses)
    assert s1.dtype == np.float32 and s1.shape == (11,) and np.std(s1) > 0
    np.testing.assert_allclose(s8, s1, rtol=1e-5, atol=1e-5)
    # padding (rows, length buckets) changes nothing: each row alone, unpadded, through the module
    from flax import nnx

    model = nnx.merge(one.graphdef, one.params, one.model_state)
    for i in (0, 5, 10):
        ids, _ = one.encode(questions[i], responses[i])
        alone, _ = model.scores(jnp.asarray(ids)[None], jnp.asarray([len(ids) - 1]))
        np.testing.assert_allclose(float(alone[0]), s1[i], rtol=1e-5, atol=1e-5)
    assert len(sharded.score([], [])) == 0
