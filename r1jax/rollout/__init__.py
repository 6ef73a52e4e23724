"""② Rollout: jitted KV-cache sampler producing G completions per prompt with the log-probs GRPO needs.

    rollout = generate(graphdef, state, prompt_tokens_bp, prompt_lens_b, SamplingParams(...), rng)

See docs/contracts.md § Rollout; sampling.py (pure sampling fns), stops.py (stop automata),
sampler.py (prefill + decode loop), weight_sync.py (resharding for a separate sampler mesh).
"""

from r1jax.rollout.sampler import Sampler, generate
from r1jax.rollout.types import FINISH_LENGTH, FINISH_STOP, Rollout, SamplingParams
from r1jax.rollout.weight_sync import reshard

__all__ = ["FINISH_LENGTH", "FINISH_STOP", "Rollout", "Sampler", "SamplingParams", "generate", "reshard"]
