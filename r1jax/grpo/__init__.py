"""r1jax.grpo: ④ advantages and ⑤ the GRPO update (log-probs, loss variants, optimizer, jitted step).

See docs/grpo.md for the variants and the default, docs/contracts.md § GRPO for the interface.
"""

from r1jax.grpo.advantages import advantages, dynamic_sampling_keep, zero_variance_fraction
from r1jax.grpo.config import GRPOConfig
from r1jax.grpo.logprobs import token_logprobs, token_logprobs_and_entropy
from r1jax.grpo.loss import grpo_loss
from r1jax.grpo.optimizer import OptimConfig, make_optimizer
from r1jax.grpo.state import (
    TrainBatch,
    TrainState,
    init_train_state,
    shard_batch,
    split_model_state,
    train_state_shardings,
    validate_batch,
)
from r1jax.grpo.step import check_finite, make_logprob_fn, make_update_step, step_key

__all__ = [
    "GRPOConfig", "OptimConfig", "TrainBatch", "TrainState", "advantages", "check_finite",
    "dynamic_sampling_keep", "grpo_loss", "init_train_state", "make_logprob_fn", "make_optimizer",
    "make_update_step", "shard_batch", "split_model_state", "step_key", "token_logprobs",
    "token_logprobs_and_entropy", "train_state_shardings", "validate_batch", "zero_variance_fraction",
]
