"""④ DAPO dynamic sampling with a fixed batch shape: groups whose rewards all tie carry no gradient,
so they are replaced by informative groups from fresh rollouts."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from r1jax.grpo.advantages import informative_groups
from r1jax.parallel import multihost
from r1jax.reward import RewardBatch
from r1jax.rollout import Rollout


def fill_informative_groups(first, draw, group_size: int, max_rounds: int):
    """`first` and every `draw(round)` are (rollout, examples, rewards) of whole groups. Tied groups
    of `first` are replaced by informative groups drawn from up to `max_rounds` fresh rollouts; if
    too few are found the batch is topped up with tied groups (zero advantage, no effect on the
    update). Returns (rollout, examples, rewards, rounds); the rollout's arrays keep the first rollout's
    shardings."""
    G = group_size
    n_groups = len(first[1]) // G
    informative = lambda src: [(src, g) for g in np.flatnonzero(informative_groups(src[2].rewards, G, src[2].valid))]
    pool = informative(first)
    tied = [(first, g) for g in range(n_groups) if (first, g) not in pool]
    rounds = 0
    while len(pool) < n_groups and rounds < max_rounds:
        rounds += 1
        pool += informative(draw(rounds))
    chosen = (pool + tied)[:n_groups]

    def rows(x, g):
        return x[g * G : (g + 1) * G]

    def gather(field_values):  # one field of the chosen groups' sources, concatenated in order
        first_value = field_values(first)
        if isinstance(first_value, dict):
            return {k: gather(lambda src, k=k: field_values(src)[k]) for k in first_value}
        if isinstance(first_value, list):
            return [x for src, g in chosen for x in rows(field_values(src), g)]
        # the whole rows of every process (multihost.fetch): the refilled batch is the same everywhere
        value = np.concatenate([rows(np.asarray(multihost.fetch(field_values(src))), g) for src, g in chosen])
        if isinstance(first_value, jax.Array):  # placed as the first rollout's arrays are: a sharded program
            return multihost.put(value, first_value.sharding)  # takes it on every process as it took those
        return value

    def take(index: int, cls):
        return cls(**{f.name: gather(lambda src, n=f.name: getattr(src[index], n))
                      for f in dataclasses.fields(cls) if getattr(first[index], f.name) is not None})

    examples = [e for src, g in chosen for e in rows(src[1], g)]
    return take(0, Rollout), examples, take(2, RewardBatch), rounds
