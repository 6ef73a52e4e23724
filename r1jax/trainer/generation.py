"""② seen from a stage: prompt batches -> Rollout with the policy's current weights, and the
sampling settings of the config with the tokenizer's stop tokens added."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx
from jax.sharding import Mesh

from r1jax.data.pipeline import PromptBatch
from r1jax.model import abstract_model
from r1jax.rollout import Rollout, Sampler, SamplingParams, reshard


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    """The `rollout` section: how completions are drawn (paper R1-Zero trains at T = 1)."""

    max_prompt_len: int = 64
    """Longest prompt in tokens; a longer one is an error naming the example."""
    max_new_tokens: int = 48
    """Completion budget in tokens (reaching it truncates the completion)."""
    temperature: float = 1.0
    """Sampling temperature of training rollouts (R1-Zero trains at 1.0)."""
    top_p: float = 1.0
    """Nucleus mass (1 = off)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off)."""
    stop_strings: tuple[str, ...] = ()
    """Strings that end a completion however they are tokenised (e.g. '</answer>')."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end a completion, besides the tokenizer's EOS."""
    compute_dtype: str = ""
    """The sampler's compute dtype ('' = the policy's); e.g. 'bfloat16' samples in bf16 while the trainer
    keeps float32, as serving engines do: a real source of sampler/trainer mismatch."""
    compaction_levels: int = 2
    """How many times the decode batch halves as rows finish (0 = never): the long tail of a group is
    decoded in a smaller batch; each level adds one copy of the decode step to the compiled program."""

    def __post_init__(self):
        SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                       max_new_tokens=self.max_new_tokens, stop_token_ids=self.stop_token_ids,
                       stop_strings=self.stop_strings)  # validates now, before any compilation
        if self.max_prompt_len < 1:
            raise ValueError(f"max_prompt_len must be >= 1, got {self.max_prompt_len}")
        if self.compaction_levels < 0:
            raise ValueError(f"compaction_levels must be >= 0, got {self.compaction_levels}")


class Generator:
    """Samples on `mesh`: the trainer's own, or separate sampler devices (the weights are then moved
    device to device before each generation, `rollout.reshard`)."""

    def __init__(self, graphdef, mesh: Mesh, tokenizer, spec: RolloutSpec, model_cfg=None):
        if spec.compute_dtype:  # the same parameters, another compute dtype: another graph definition
            if model_cfg is None:
                raise ValueError("rollout.compute_dtype needs the policy's model config")
            graphdef = abstract_model(dataclasses.replace(model_cfg, dtype=spec.compute_dtype))[0]
        self.sampler = Sampler(graphdef, mesh=mesh, pad_id=int(tokenizer.pad_id),
                               compaction_levels=spec.compaction_levels)
        self.mesh, self.tokenizer, self.spec = mesh, tokenizer, spec
        self.stop_token_ids = tuple(sorted({int(tokenizer.eos_id)} | set(spec.stop_token_ids)))

    def sampling(self, n: int, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, max_new_tokens: int | None = None) -> SamplingParams:
        """The rollout section's settings, with any of them replaced (evaluation: T = 0.6, top-p 0.95)."""
        s = self.spec
        return SamplingParams(
            temperature=s.temperature if temperature is None else temperature,
            top_p=s.top_p if top_p is None else top_p, top_k=s.top_k if top_k is None else top_k,
            max_new_tokens=max_new_tokens or s.max_new_tokens, stop_token_ids=self.stop_token_ids,
            stop_strings=s.stop_strings, n=n)

    def weights(self, params, model_state):
        """The model state laid out on the sampler's mesh (a no-op when it shares the trainer's)."""
        full = nnx.merge_state(params, model_state)
        first = jax.tree.leaves(full)[0]
        if set(first.sharding.device_set) <= set(self.mesh.devices.flat):
            return full
        return reshard(full, self.mesh)

    def __call__(self, params, model_state, batch: PromptBatch, sampling: SamplingParams, key,
                 record_routing: bool = False) -> Rollout:
        """record_routing: Rollout.routing_btlk holds the experts every token went through (MoE)."""
        full = self.weights(params, model_state)
        return self.sampler.generate(full, batch.tokens_bp, batch.lens_b, sampling, key, tokenizer=self.tokenizer,
                                     record_routing=record_routing)

    def block(self, rollout: Rollout) -> Rollout:
        return jax.block_until_ready(rollout)
