"""③ seen from a stage: a reward client for the job (auto-starting a server subprocess unless the
config names a running fleet), and the reward items of a batch of completions."""

from __future__ import annotations

import contextlib

from r1jax import console
from r1jax.data.templates import REWARD_FORMAT
from r1jax.reward import RewardBatch, RewardClient, start_local_server


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
        return self.client.score(self.items(examples, texts))

    def equivalence_classes(self, groups: list[list[str | None]]) -> list[list[int]]:
        return self.client.equivalence_classes(groups)
