"""The eval hook every stage shares: the paper's protocol (§3) on a held-out problem set with the
policy's current weights — k samples per problem at T = 0.6, top-p 0.95; pass@1 averaged over the
k samples, cons@k with votes grouped by mathematical equivalence (the reward server decides), and
unbiased pass@k."""

from __future__ import annotations

import dataclasses

import jax

from r1jax import console
from r1jax.data.pipeline import PromptPipelineConfig, make_prompt_dataset
from r1jax.evals.harness import EvalResult, evaluate
from r1jax.trainer.generation import Generator
from r1jax.trainer.rewards import Scorer


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """The `eval` section."""

    every: int = 25
    """Evaluate every this many steps (and at the first and the last)."""
    k: int = 4
    """Samples per problem."""
    temperature: float = 0.6
    """Sampling temperature of the evaluation (the paper's 0.6)."""
    top_p: float = 0.95
    """Nucleus mass of the evaluation (the paper's 0.95)."""
    max_new_tokens: int = 0
    """Completion budget of an evaluation, separate from training's; 0 = the rollout section's."""
    batch_prompts: int = 16
    """Problems per generation call (each gives k rows)."""
    pass_ks: tuple[int, ...] = (1,)
    """Unbiased pass@k reported for these k (those <= k)."""

    def __post_init__(self):
        for name in ("every", "k", "batch_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0 (0 = the rollout's), got {self.max_new_tokens}")
        if not all(1 <= k for k in self.pass_ks):
            raise ValueError(f"pass_ks must be >= 1, got {self.pass_ks}")

    def due(self, step: int, last: int) -> bool:
        return step % self.every == 0 or step == last


class Evaluator:
    def __init__(self, generator: Generator, scorer: Scorer, examples: list[dict], template: str,
                 spec: EvalSpec, seed: int):
        self.generator, self.scorer, self.spec, self.seed = generator, scorer, spec, seed
        cfg = PromptPipelineConfig(batch_size=min(spec.batch_prompts, len(examples)),
                                   max_prompt_len=generator.spec.max_prompt_len, template=template, seed=seed,
                                   shuffle=False, num_epochs=1, drop_remainder=False)
        self.batches = list(make_prompt_dataset(examples, generator.tokenizer, cfg)[0])
        self.sampling = generator.sampling(n=spec.k, temperature=spec.temperature, top_p=spec.top_p, top_k=0,
                                           max_new_tokens=spec.max_new_tokens or None)

    def __call__(self, params, model_state, step: int) -> EvalResult:
        key = jax.random.fold_in(jax.random.key(self.seed + 1), step)  # same problems, fresh samples
        result = evaluate(
            lambda batch, k: self.generator(params, model_state, batch, self.sampling, key),
            self.scorer, self.scorer.equivalence_classes, self.batches, k=self.spec.k,
            pass_ks=tuple(k for k in self.spec.pass_ks if k <= self.spec.k),
        )
        console.say(f"eval @{step}", f"pass@1 {result.pass_at_1:.3f}  cons@{result.k} {result.cons_at_k:.3f}  "
                                     f"format {result.format_rate:.2f}  ({result.n_problems} problems × k={result.k})")
        return result


class ScoreEvaluator(Evaluator):
    """Held-out prompts graded by their rewards alone, with no answer to check (R1 §2.3.4's general
    prompts, scored by reward models): k samples per prompt at the evaluation's settings, then the mean
    reward, the mean of every reward component and the completion length, as `<prefix><name>`."""

    def __init__(self, generator: Generator, scorer, examples: list[dict], template: str, spec: EvalSpec,
                 seed: int, prefix: str):
        super().__init__(generator, scorer, examples, template, spec, seed)
        self.prefix = prefix

    def __call__(self, params, model_state, step: int) -> dict:
        import numpy as np

        key = jax.random.fold_in(jax.random.key(self.seed + 2), step)
        rewards, lengths, components = [], [], {}
        for i, batch in enumerate(self.batches):
            rollout = self.generator(params, model_state, batch, self.sampling, jax.random.fold_in(key, i))
            examples = [ex for ex in batch.examples for _ in range(self.spec.k)]
            scored = self.scorer(examples, list(rollout.texts))
            rewards.append(np.asarray(scored.rewards, np.float64))
            lengths.append(np.asarray(rollout.completion_lens_b, np.float64).reshape(-1))
            for name, values in scored.components.items():
                components.setdefault(name, []).append(np.asarray(values, np.float64))
        out = {"reward": float(np.mean(np.concatenate(rewards))),
               **{name: float(np.mean(np.concatenate(v))) for name, v in sorted(components.items())},
               "length_mean": float(np.mean(np.concatenate(lengths)))}
        console.say(f"eval @{step}", f"{self.prefix}: " + "  ".join(f"{k} {v:.3f}" for k, v in out.items()))
        return {f"{self.prefix}{k}": v for k, v in out.items()}
