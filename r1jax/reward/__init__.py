"""③ Reward server: math / countdown / code verification, format and language rewards (never imports jax).

See docs/reward.md and docs/contracts.md § Reward.
"""

from r1jax.reward.client import (
    RewardBatch,
    RewardClient,
    RewardRequestError,
    RewardServerUnavailable,
    start_local_server,
)
from r1jax.reward.registry import register

__all__ = [
    "RewardBatch",
    "RewardClient",
    "RewardRequestError",
    "RewardServerUnavailable",
    "register",
    "start_local_server",
]
