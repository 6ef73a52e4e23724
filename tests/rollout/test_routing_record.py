"""Routing record in the sampler and its replay by the trainer core (R3), on tiny_moe.

The sampler's recorded experts equal a full forward's routing at every prompt and completion position;
recording changes nothing else; replaying them in the trainer's forward reproduces the sampler's routing
exactly and shrinks the sampler/trainer log-prob gap (bf16 sampler vs float32 trainer, and a router
perturbed between sampling and training); the same holds on an expert-parallel mesh."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import r1jax.model as M
from r1jax.model.moe import router_disagreement
from r1jax.model.transformer import main_moe_layers
from r1jax.parallel.mesh import MeshConfig, make_mesh, single_device_mesh
from r1jax.rollout import FINISH_STOP, Sampler, SamplingParams
from r1jax.rollout.weight_sync import reshard
from r1jax.trainer.logprobs import make_logprob_fn, row_positions, sequence_logprobs

CFG = dataclasses.replace(M.get_variant("tiny_moe"), init_std=0.2)  # decisive routers, MTP module present
PAD = 0
RS = np.random.RandomState(0)
PROMPTS = RS.randint(1, CFG.vocab_size, (8, 7))
LENS = np.array([7, 2, 5, 3, 6, 1, 4, 7])
G, MAX_NEW = 2, 20
N_ROUTED, K = main_moe_layers(CFG), CFG.n_experts_per_tok


def params(**kw):
    return SamplingParams(**{**dict(temperature=1.0, max_new_tokens=MAX_NEW, n=G), **kw})


@pytest.fixture(scope="module")
def model():
    return nnx.split(M.Transformer(CFG, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def sampler(model):
    return Sampler(model[0], pad_id=PAD, record_routing=True)


@pytest.fixture(scope="module")
def free_forward(model):
    """A full forward without a cache over the rollout rows -> its ModelAux.routing_btlk."""
    graphdef = model[0]

    @jax.jit
    def run(state, tokens_bl):
        aux = M.apply(graphdef, state, tokens_bl, row_positions(tokens_bl))[2]
        return aux.routing_btlk

    return run


@pytest.fixture(scope="module")
def stop_id(model, sampler):
    """A token that ends some rows early while others run on (both ways of routing the last token)."""
    r = jax.device_get(sampler.generate(model[1], PROMPTS, LENS, params(), jax.random.key(1)))
    rows = r.tokens_bl.shape[0]
    first = {}  # token -> {row: first completion position}
    for row in range(rows):
        start = int(r.prompt_lens_b[row])
        comp = r.tokens_bl[row, start : start + int(r.completion_lens_b[row])].tolist()
        for pos, tok in enumerate(comp):
            first.setdefault(tok, {}).setdefault(row, pos)
    # the token that ends the most rows at the most different lengths, while some rows never meet it
    usable = [t for t, where in first.items() if len(where) < rows]
    return max(usable, key=lambda t: (len(set(first[t].values())), len(first[t])))


@pytest.fixture(scope="module")
def rollout(model, sampler, stop_id):
    return jax.device_get(sampler.generate(model[1], PROMPTS, LENS, params(stop_token_ids=(stop_id,)),
                                           jax.random.key(1)))


def valid_mask(r):
    """1 on prompt + completion (where the recorded routing means something)."""
    ends = np.asarray(r.prompt_lens_b) + np.asarray(r.completion_lens_b)
    return (np.arange(r.tokens_bl.shape[1])[None] < ends[:, None]).astype(np.float32)


def trainer_pass(graphdef, state, r, routing_btlk=None):
    """The trainer core's forward over the rollout rows (float32): (logp_bl, ModelAux)."""

    @jax.jit
    def run(state, tokens_bl, routing_btlk):
        model = nnx.merge(graphdef, state)
        logp, _, aux = sequence_logprobs(model, tokens_bl, row_positions(tokens_bl), None, 16, routing_btlk)
        return logp, aux

    return run(state, jnp.asarray(r.tokens_bl), None if routing_btlk is None else jnp.asarray(routing_btlk))


def gap(logp_bl, r):
    """|trainer - sampler| log-prob of the T=1 policy on completion tokens."""
    m = np.asarray(r.completion_mask_bl) > 0
    return np.abs(np.asarray(logp_bl) - np.asarray(r.logp_policy_bl))[m]


def replay_off_and_on(graphdef, state, r):
    """The trainer's forward over rollout r without and with replaying its recorded routing:
    (aux_off, aux_on, disagreement_off, disagreement_on, |logp gap| off, |logp gap| on)."""
    valid = jnp.asarray(valid_mask(r))
    logp_off, aux_off = trainer_pass(graphdef, state, r)
    logp_on, aux_on = trainer_pass(graphdef, state, r, r.routing_btlk)
    off = router_disagreement(aux_off.routing_btlk, jnp.asarray(r.routing_btlk), valid)
    on = router_disagreement(aux_on.routing_btlk, jnp.asarray(r.routing_btlk), valid)
    return aux_off, aux_on, off, on, gap(logp_off, r), gap(logp_on, r)


def test_recorded_routing_equals_full_forward(model, rollout, free_forward):
    r = rollout
    rows, length = r.tokens_bl.shape
    assert r.routing_btlk.shape == (rows, length, N_ROUTED, K) and r.routing_btlk.dtype == np.int32
    stopped = r.finish_reason_b == FINISH_STOP
    assert stopped.any() and (~stopped).any() and len(set(r.completion_lens_b.tolist())) > 2
    full = np.asarray(free_forward(model[1], jnp.asarray(r.tokens_bl)))
    valid = valid_mask(r) > 0
    for row in range(rows):
        p, c = r.prompt_lens_b[row], r.completion_lens_b[row]
        # prompt (the prefill, repeated over the G samples) and completion (decode steps; the last
        # token by the step after the loop): float32, exactly the full forward's experts
        np.testing.assert_array_equal(r.routing_btlk[row, :p], full[row, :p], err_msg=f"row {row} prompt")
        np.testing.assert_array_equal(r.routing_btlk[row, p:p + c], full[row, p:p + c],
                                      err_msg=f"row {row} completion")
    assert float(router_disagreement(jnp.asarray(r.routing_btlk), jnp.asarray(full), jnp.asarray(valid))
                 ["set_frac"]) == 0.0
    # past prompt + completion: the documented fill, experts 0..K-1
    fill = np.broadcast_to(np.arange(K), (int((~valid).sum()), N_ROUTED, K))
    np.testing.assert_array_equal(r.routing_btlk[~valid], fill)
    # G samples of a prompt share its routing on the prompt
    np.testing.assert_array_equal(r.routing_btlk[0, :LENS[0]], r.routing_btlk[1, :LENS[0]])


@pytest.mark.parametrize("max_new", [1, 16])
def test_last_token_is_routed_at_the_budget_edges(model, sampler, free_forward, max_new):
    """max_new_tokens=1 (the one token is fed by the only loop step) and max_new_tokens = its bucket
    (the step that feeds the last tokens samples past the end of the buffers: nothing is kept)."""
    r = jax.device_get(sampler.generate(model[1], PROMPTS, LENS, params(max_new_tokens=max_new), jax.random.key(2)))
    full = np.asarray(free_forward(model[1], jnp.asarray(r.tokens_bl)))
    valid = valid_mask(r) > 0
    np.testing.assert_array_equal(r.routing_btlk[valid], full[valid])
    np.testing.assert_array_equal(r.completion_lens_b, max_new)
    plain = jax.device_get(sampler.generate(model[1], PROMPTS, LENS, params(max_new_tokens=max_new),
                                            jax.random.key(2), record_routing=False))
    for name in ("tokens_bl", "completion_mask_bl", "logp_sampling_bl", "logp_policy_bl", "finish_reason_b"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(r, name), err_msg=name)


def test_host_side_cut_fills_the_routing():
    """A stop string the device missed (non-ASCII across tokens) cuts the row on the host: its routing
    past the new end becomes the fill too."""
    from r1jax.rollout.sampler import _decode_texts
    from r1jax.rollout.types import FINISH_LENGTH, Rollout

    class Bytes:
        pieces = [b"<pad>", b"<eos>", b"a", b"b", b"\xc3", b"\xa9"]
        vocab_size, bos_id, eos_id, pad_id = len(pieces), None, 1, 0

        def decode(self, ids):
            return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    tokens = np.array([[2, 2, 4, 5, 3, 3]], np.int32)  # prompt "a", completion "aéb b"
    mask = np.array([[0, 1, 1, 1, 1, 1]], np.float32)
    routing = np.arange(6 * N_ROUTED * K, dtype=np.int32).reshape(1, 6, N_ROUTED, K) % CFG.n_routed_experts
    r = Rollout(tokens, np.ones(1, np.int32), np.array([5], np.int32), np.array([FINISH_LENGTH], np.int32),
                mask, -mask, -mask, routing_btlk=routing)
    out = jax.device_get(_decode_texts(r, Bytes(), SamplingParams(stop_strings=("é",)), pad_id=0))
    assert out.texts == ["aé"] and out.completion_lens_b[0] == 3
    np.testing.assert_array_equal(out.routing_btlk[0, :4], routing[0, :4])
    np.testing.assert_array_equal(out.routing_btlk[0, 4:], np.broadcast_to(np.arange(K), (2, N_ROUTED, K)))


def test_recording_changes_nothing_else(model, sampler, rollout, stop_id):
    plain = jax.device_get(sampler.generate(model[1], PROMPTS, LENS, params(stop_token_ids=(stop_id,)),
                                            jax.random.key(1), record_routing=False))
    assert plain.routing_btlk is None
    for name in ("tokens_bl", "prompt_lens_b", "completion_lens_b", "finish_reason_b", "completion_mask_bl",
                 "logp_sampling_bl", "logp_policy_bl"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(rollout, name), err_msg=name)
    # a dense model records nothing and compiles the plain program
    dense = M.get_variant("tiny_dense")
    graphdef, state = nnx.split(M.Transformer(dense, rngs=nnx.Rngs(0)))
    s = Sampler(graphdef, pad_id=PAD, record_routing=True)
    assert s.generate(state, PROMPTS, LENS, params(max_new_tokens=4), jax.random.key(0)).routing_btlk is None
    s.generate(state, PROMPTS, LENS, params(max_new_tokens=4), jax.random.key(0), record_routing=False)
    assert len(s._programs) == 1


def test_replay_reproduces_sampler_routing_and_shrinks_the_gap_bf16(model):
    """The realistic mismatch: a bf16 sampler, a float32 trainer. Without replay the trainer's routers
    pick other experts for some tokens; with replay it runs exactly the sampler's and the log-prob gap
    shrinks (what remains is bf16 vs float32 arithmetic, not a different expert)."""
    graphdef, state = model
    bf16_graphdef = nnx.split(M.Transformer(dataclasses.replace(CFG, dtype="bfloat16"), rngs=nnx.Rngs(0)))[0]
    bf16_state = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, state)
    r = jax.device_get(Sampler(bf16_graphdef, pad_id=PAD).generate(
        bf16_state, PROMPTS, LENS, params(), jax.random.key(3), record_routing=True))
    aux_off, aux_on, off, on, gap_off, gap_on = replay_off_and_on(graphdef, state, r)
    print(f"\nbf16 sampler / fp32 trainer, {gap_off.size} tokens: router disagreement off "
          f"{float(off['set_frac']):.3f} (slots {float(off['slot_frac']):.3f}), on {float(on['set_frac']):.3f}; "
          f"|logp gap| off mean {gap_off.mean():.2e} max {gap_off.max():.2e}, "
          f"on mean {gap_on.mean():.2e} max {gap_on.max():.2e}")
    assert float(off["set_frac"]) > 0.01
    assert float(on["set_frac"]) == 0.0 and float(on["slot_frac"]) == 0.0
    inside = valid_mask(r) > 0
    np.testing.assert_array_equal(np.asarray(aux_on.routing_btlk)[inside], r.routing_btlk[inside])
    # the replayed forward's routers pick what the free forward did at the first MoE layer (same input)
    np.testing.assert_array_equal(np.asarray(aux_on.router_choice_btlk[:, :, 0]),
                                  np.asarray(aux_off.routing_btlk[:, :, 0]))
    assert gap_on.mean() < 0.8 * gap_off.mean() and gap_on.max() < 0.5 * gap_off.max()


@pytest.mark.parametrize("what", ["bias", "router"])
def test_router_perturbed_between_sampling_and_training(model, what):
    """The sampler's router differs from the trainer's (its bias, or its weights, moved): without replay
    the trainer routes differently; with replay it routes exactly as the sampler did. A bias never
    enters the gates, so replay then removes the gap entirely; moved weights leave only the gates'
    difference."""
    graphdef, state = model
    rs = np.random.RandomState(4)

    def perturb(path, v):
        if what == "bias" and path[-1] == "e_score_correction_bias":
            return v.replace(v[...] + 0.05 * jnp.asarray(rs.randn(*v.shape), jnp.float32))
        if what == "router" and path[-2:] == ("gate", "kernel"):
            return v.replace(v[...] + 0.004 * jnp.asarray(rs.randn(*v.shape), jnp.float32))
        return v

    sampler_state = nnx.from_flat_state([(p, perturb(p, v)) for p, v in nnx.to_flat_state(state)])
    r = jax.device_get(Sampler(graphdef, pad_id=PAD).generate(sampler_state, PROMPTS, LENS, params(),
                                                              jax.random.key(5), record_routing=True))
    aux_off, aux_on, off, on, gap_off, gap_on = replay_off_and_on(graphdef, state, r)
    print(f"\n{what} perturbed: disagreement off {float(off['set_frac']):.3f}, on {float(on['set_frac']):.3f}; "
          f"|logp gap| off mean {gap_off.mean():.2e} max {gap_off.max():.2e}, "
          f"on mean {gap_on.mean():.2e} max {gap_on.max():.2e}")
    assert float(off["set_frac"]) > 0.01 and float(off["slot_frac"]) > 0
    assert float(on["set_frac"]) == 0.0 and float(on["slot_frac"]) == 0.0
    if what == "bias":
        assert gap_on.max() < 1e-4 < gap_off.max()  # float32 cache-vs-full numerics only
    else:
        assert gap_on.mean() < 0.2 * gap_off.mean() and gap_on.max() < 0.2 * gap_off.max()


def test_expert_parallel_record_and_replay_equal_one_device(model, rollout, stop_id):
    """Sampler and trainer core on (data=2, fsdp=2, expert=2): the decode's MoE runs under shard_map,
    the recorded routing and the replayed log-probs equal one device's."""
    assert jax.device_count() == 8
    graphdef, state = model
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, expert=2, tensor=1))
    sharded = reshard(state, mesh)
    r = Sampler(graphdef, mesh=mesh, pad_id=PAD, record_routing=True).generate(
        sharded, PROMPTS, LENS, params(stop_token_ids=(stop_id,)), jax.random.key(1))
    assert not r.routing_btlk.sharding.is_fully_replicated  # rows split like tokens_bl
    r = jax.device_get(r)
    np.testing.assert_array_equal(r.tokens_bl, rollout.tokens_bl)
    np.testing.assert_array_equal(r.routing_btlk, rollout.routing_btlk)

    params_, rest = nnx.split_state(state, nnx.Param, ...)
    ref_logp, ref_choice = make_logprob_fn(graphdef, single_device_mesh(), 16, with_router_choice=True)(
        params_, rest, r.tokens_bl, r.completion_mask_bl, r.routing_btlk)
    sp, srest = nnx.split_state(sharded, nnx.Param, ...)
    fn = make_logprob_fn(graphdef, mesh, 16, M.state_shardings(sp, mesh), M.state_shardings(srest, mesh),
                         with_router_choice=True)
    logp, choice = fn(sp, srest, r.tokens_bl, r.completion_mask_bl, r.routing_btlk)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(ref_logp), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(choice), np.asarray(ref_choice))
    assert gap(logp, r).max() < 1e-4
    # replay off through the same function: a separate program, the same log-probs here (float32)
    np.testing.assert_allclose(np.asarray(fn(sp, srest, r.tokens_bl, r.completion_mask_bl)[0]), np.asarray(logp),
                               atol=1e-5)
