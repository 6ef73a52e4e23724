"""③ seen from a stage: a reward client for the job (auto-starting a server subprocess unless the
config names a running fleet), and the reward items of a batch of completions."""

from __future__ import annotations

import contextlib

import numpy as np

from r1jax import console
from r1jax.data.templates import REWARD_FORMAT
from r1jax.parallel import multihost
from r1jax.reward import RewardBatch, RewardClient, start_local_server

PRIMARY_SOURCE = "data"  # the source of the `data` config section, rewarded by `reward.weights`


@contextlib.contextmanager
def reward_client(spec):
    """spec: trainer.config.RewardSpec. Yields a RewardClient that answered /health, so a missing
    server fails before any compute."""
    with contextlib.ExitStack() as stack:
        urls = list(spec.urls)
        if not urls:
            urls = [stack.enter_context(start_local_server(workers=spec.workers, plugins=spec.plugins))]
        client = RewardClient(urls, timeout_s=spec.timeout_s)
        try:
            health = client.health()
        except Exception as e:
            raise ConnectionError(f"config.reward.urls: reward server {urls} is not answering: {e}") from e
        sandbox = health.get("sandbox", {})
        console.say("reward", f"{'started' if not spec.urls else 'using'} {', '.join(urls)}: "
                              f"{health.get('workers', '?')} workers, code sandbox "
                              f"{'ready' if sandbox.get('ok') else 'UNAVAILABLE'}"
                              f"{' (no network)' if sandbox.get('network') is False else ''}")
        yield client


def score_shared(score_fn, examples: list[dict], texts: list[str]) -> RewardBatch:
    """score_fn over all rows, each process scoring its own share on its own reward server; every
    process gets the whole RewardBatch (rows in order), so what follows (advantages, metrics) is the
    same everywhere. On one process: score_fn(examples, texts)."""
    if not multihost.is_multiprocess():
        return score_fn(examples, texts)
    part = multihost.share(len(texts))
    mine = score_fn(examples[part], texts[part]) if texts[part] else None
    return concat_batches([b for b in multihost.allgather(mine) if b is not None])


def concat_batches(batches: list[RewardBatch]) -> RewardBatch:
    """RewardBatches of consecutive rows as one (a component missing from a part is 0 there)."""
    names = sorted({c for b in batches for c in b.components})
    return RewardBatch(
        rewards=np.concatenate([b.rewards for b in batches]),
        components={c: np.concatenate([np.asarray(b.components.get(c, np.zeros(len(b.rewards), np.float32)))
                                       for b in batches]) for c in names},
        status=[x for b in batches for x in b.status],
        valid=np.concatenate([np.asarray(b.valid, bool) for b in batches]),
        details=[x for b in batches for x in b.details],
        answers=None if any(b.answers is None for b in batches) else [a for b in batches for a in b.answers],
    )


class Scorer:
    """Scores completions of examples with the configured reward weights, graded against the output
    format of the prompt template."""

    def __init__(self, client: RewardClient, template: str, weights: dict[str, float]):
        self.client, self.weights = client, dict(weights)
        self.reward_format = REWARD_FORMAT[template]

    def items(self, examples: list[dict], texts: list[str]) -> list[dict]:
        return [{"completion": t, "task": ex["task"], "answer": ex.get("answer"), "meta": ex.get("meta", {}),
                 "template": self.reward_format, "weights": self.weights} for ex, t in zip(examples, texts)]

    def __call__(self, examples: list[dict], texts: list[str]) -> RewardBatch:
        return score_shared(lambda ex, t: self.client.score(self.items(ex, t)), examples, texts)

    def equivalence_classes(self, groups: list[list[str | None]]) -> list[list[int]]:
        return self.client.equivalence_classes(groups)


class MixedScorer:
    """Rewards for rows drawn from several prompt sources (R1 §2.3.4, RL for all scenarios): each row is
    routed by its example's "source" — the source's rule components from the reward server (its own
    weights) plus its reward models' scores, computed on the accelerator mesh in this process (the
    server never imports jax) — and the reward is their weighted sum. Components are reported per row:
    the rule names, and "rm_<name>" for a reward model (0 where the row's source does not use it).

    sources: trainer.config.SourceSpec; reward_models: name -> an object with
    `score(questions, responses) -> float32 [N]` (r1jax.trainer.reward_model.RewardModel)."""

    def __init__(self, client: RewardClient, template: str, sources, reward_models: dict):
        self.sources = {s.name: s for s in sources}
        self.rules = {s.name: Scorer(client, template, dict(s.rule_weights)) for s in sources if s.rule_weights}
        self.models = dict(reward_models)
        self.client = client
        missing = sorted({m for s in sources for m, _ in s.model_weights} - set(self.models))
        if missing:
            raise ValueError(f"reward models {missing} are weighted by a source but not loaded")

    def __call__(self, examples: list[dict], texts: list[str]) -> RewardBatch:
        import numpy as np

        n = len(texts)
        rewards, valid = np.zeros(n, np.float32), np.ones(n, bool)
        status, details, answers = ["ok"] * n, [{} for _ in range(n)], [None] * n
        components: dict[str, np.ndarray] = {}
        rows: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            rows.setdefault(ex.get("source", PRIMARY_SOURCE), []).append(i)
        for name, idx in rows.items():
            if name not in self.sources:
                raise ValueError(f"example {examples[idx[0]].get('id')!r}: source {name!r} is not one of "
                                 f"{sorted(self.sources)}")
            source, at = self.sources[name], np.asarray(idx)
            if name in self.rules:
                scored = self.rules[name]([examples[i] for i in idx], [texts[i] for i in idx])
                rewards[at] += scored.rewards
                valid[at] = scored.valid
                for c, values in scored.components.items():
                    components.setdefault(c, np.zeros(n, np.float32))[at] = values
                for j, i in enumerate(idx):
                    status[i], details[i] = scored.status[j], scored.details[j]
                    answers[i] = scored.answers[j] if scored.answers is not None else None
            for model, weight in source.model_weights:
                score = np.asarray(self.models[model].score([examples[i]["question"] for i in idx],
                                                            [texts[i] for i in idx]), np.float32)
                rewards[at] += weight * score
                components.setdefault(f"rm_{model}", np.zeros(n, np.float32))[at] = score
        return RewardBatch(rewards=rewards, components=components, status=status, valid=valid, details=details,
                           answers=answers)

    def equivalence_classes(self, groups: list[list[str | None]]) -> list[list[int]]:
        return self.client.equivalence_classes(groups)
