"""DAPO dynamic sampling in the trainer: tied groups are replaced by informative ones from fresh
rollouts, rows of every field stay aligned, and the batch keeps its shape."""

import dataclasses

import numpy as np

from r1jax.grpo import fill_informative_groups
from r1jax.reward import RewardBatch
from r1jax.rollout import Rollout

G, L = 2, 3


def _source(tag: str, rewards):
    n = len(rewards)
    ids = np.arange(n)
    arrays = {f.name: np.stack([ids] * L, 1).astype(np.float32) for f in dataclasses.fields(Rollout)
              if f.name.endswith("_bl")}
    arrays.update({f.name: ids.astype(np.int32) for f in dataclasses.fields(Rollout) if f.name.endswith("_b")})
    rollout = Rollout(**arrays, texts=[f"{tag}{i}" for i in range(n)])
    examples = [{"id": f"{tag}{i}"} for i in range(n)]
    rb = RewardBatch(rewards=np.asarray(rewards, np.float32), components={"accuracy": np.asarray(rewards, np.float32)},
                     status=[f"{tag}{i}" for i in range(n)], valid=np.ones(n, bool), details=[{}] * n)
    return rollout, examples, rb


def test_tied_groups_are_replaced_and_rows_stay_aligned():
    first = _source("a", [1, 1, 0, 1, 0, 0])  # groups: tied, informative, tied
    extra = {1: _source("b", [0, 0, 1, 0, 1, 1]), 2: _source("c", [0, 1, 1, 1, 0, 0])}
    rollout, examples, rewards, rounds = fill_informative_groups(first, extra.__getitem__, G, max_rounds=3)
    assert rounds == 2  # one informative group in each extra round
    assert rollout.texts == ["a2", "a3", "b2", "b3", "c0", "c1"]
    assert [e["id"] for e in examples] == rollout.texts == list(rewards.status)
    assert rollout.tokens_bl.shape == (6, L)
    r = rewards.rewards.reshape(-1, G)
    assert (r.max(1) > r.min(1)).all(), "every group now carries signal"
    np.testing.assert_array_equal(rewards.components["accuracy"], rewards.rewards)


def test_tops_up_with_tied_groups_when_rounds_run_out():
    first = _source("a", [1, 1, 0, 0, 1, 0])
    rollout, examples, rewards, rounds = fill_informative_groups(first, lambda r: _source("x", [1, 1, 1, 1, 1, 1]),
                                                                 G, max_rounds=2)
    assert rounds == 2
    assert rollout.texts == ["a4", "a5", "a0", "a1", "a2", "a3"]
