"""r1jax.grpo: the maths of ④ advantages (with dynamic sampling and reward shaping) and ⑤ the GRPO
objective (loss variants: GRPO / GSPO ratio, sampler/trainer IS correction), on the trainer core's one
jitted step (r1jax.trainer).

See docs/grpo.md for the variants and the default, docs/contracts.md § GRPO for the interface.
"""

from r1jax.grpo.advantages import advantages, dynamic_sampling_keep, informative_groups, zero_variance_fraction
from r1jax.grpo.batch import TrainBatch, validate_batch
from r1jax.grpo.config import GRPOConfig
from r1jax.grpo.dynamic_sampling import fill_informative_groups
from r1jax.grpo.loss import grpo_loss, is_weights
from r1jax.grpo.shaping import overlong_penalty
from r1jax.grpo.step import grpo_objective, make_update_step

__all__ = [
    "GRPOConfig", "TrainBatch", "advantages", "dynamic_sampling_keep", "fill_informative_groups", "grpo_loss",
    "grpo_objective", "informative_groups", "is_weights", "make_update_step", "overlong_penalty", "validate_batch",
    "zero_variance_fraction",
]
