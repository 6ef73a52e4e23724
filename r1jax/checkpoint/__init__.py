"""r1jax.checkpoint: ⑥ orbax checkpoints of the train state and the data-iterator state."""

from r1jax.checkpoint.manager import CheckpointManager, abstract_state

__all__ = ["CheckpointManager", "abstract_state"]
