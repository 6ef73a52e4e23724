"""The update step's two pytrees: TrainState (what is trained and checkpointed) and TrainBatch
(one rollout batch, docs/contracts.md § GRPO), with host-side validation of the batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.model import state_shardings
from r1jax.parallel.rules import DEFAULT_RULES, Rules, logical_to_spec


@struct.dataclass
class TrainState:
    params: nnx.State
    """Trainable parameters (nnx.Param)."""
    model_state: nnx.State
    """Everything else in the model (the MoE RouterBias); updated outside the gradient."""
    opt_state: optax.OptState
    step: jax.Array
    """int32 scalar: optimizer steps taken."""
    rng: jax.Array
    """uint32[2] base key; the key of step s is fold_in(rng, s), so a resumed run continues the stream."""


@struct.dataclass
class TrainBatch:
    """One GRPO batch, rows prompt-major (row = prompt_index * G + g); entry t of every *_logp_bl is
    log p(token t | tokens < t) and is zero outside the completion."""

    tokens_bl: jax.Array
    """int32 [B, L]: prompt + completion + pad, contiguous; positions are arange(L)."""
    completion_mask_bl: jax.Array
    """float32 [B, L]: 1 on completion tokens that count in the loss."""
    advantages_b: jax.Array
    """float32 [B]: eq. 3, from grpo.advantages."""
    old_logp_bl: jax.Array
    """float32 [B, L]: log-probs under π_old (the policy that sampled)."""
    ref_logp_bl: jax.Array
    """float32 [B, L]: log-probs under π_ref (ignored when β = 0; pass zeros)."""
    truncated_b: jax.Array | None = None
    """float32 [B]: 1 where the completion hit the length cap (masked when mask_truncated)."""
    sampler_logp_bl: jax.Array | None = None
    """float32 [B, L]: the sampler's own log-probs when old_logp_bl was recomputed (mismatch metric)."""


_BL_FLOAT = ("completion_mask_bl", "old_logp_bl", "ref_logp_bl", "sampler_logp_bl")


def validate_batch(batch: TrainBatch, group_size: int | None = None, micro_batches: int = 1) -> None:
    """Raises ValueError naming the field for wrong shapes, dtypes or non-finite values (host side,
    before the jitted step; a bad batch must never reach the compiled program)."""
    tokens = batch.tokens_bl
    if tokens is None or np.ndim(tokens) != 2:
        raise ValueError(f"TrainBatch.tokens_bl must be [B, L], got shape {np.shape(tokens)}")
    if tokens.dtype != jnp.int32:
        raise ValueError(f"TrainBatch.tokens_bl must be int32, got {tokens.dtype}")
    b, length = tokens.shape
    expected = {"advantages_b": (b,), "truncated_b": (b,), **{name: (b, length) for name in _BL_FLOAT}}
    for name, shape in expected.items():
        x = getattr(batch, name)
        if x is None:
            if name in ("truncated_b", "sampler_logp_bl"):
                continue
            raise ValueError(f"TrainBatch.{name} is missing")
        if tuple(np.shape(x)) != shape:
            raise ValueError(f"TrainBatch.{name} must have shape {shape} (from tokens_bl), got {np.shape(x)}")
        if x.dtype != jnp.float32:
            raise ValueError(f"TrainBatch.{name} must be float32, got {x.dtype}")
        if isinstance(x, np.ndarray) and not np.isfinite(x).all():
            row = int(np.argwhere(~np.isfinite(x))[0][0])
            raise ValueError(f"TrainBatch.{name} has non-finite values (first in row {row})")
    if group_size is not None and b % group_size:
        raise ValueError(f"TrainBatch: batch size {b} is not a multiple of group_size {group_size}")
    if b % micro_batches:
        raise ValueError(f"TrainBatch: batch size {b} is not divisible by micro_batches {micro_batches}")


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """One sharding for every batch field: rows over the batch axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",), rules))


def shard_batch(batch: TrainBatch, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> TrainBatch:
    return jax.device_put(batch, batch_sharding(mesh, rules))


def split_model_state(state: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(params, everything else) of a full model state from create_sharded."""
    params, rest = nnx.split_state(state, nnx.Param, ...)
    return params, rest


def train_state_shardings(params, model_state, optimizer, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """TrainState of NamedShardings: params and every optimizer moment as the rules table puts the
    parameter; scalars, counts and the rng replicated. Works on abstract (eval_shape) states."""
    is_var = lambda x: isinstance(x, nnx.Variable)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    replicated = NamedSharding(mesh, P())
    # optax moments are Variables carrying their parameter's logical axes; counts are plain scalars;
    # frozen parameters' moments are Variables around an empty optax.MaskedNode (no shape, no arrays)
    def one(x):
        if is_var(x) and hasattr(x, "shape"):
            return state_shardings(nnx.State({"v": x}), mesh, rules)["v"]
        return replicated

    opt_sh = jax.tree.map(one, abstract_opt, is_leaf=is_var)
    return TrainState(
        params=state_shardings(params, mesh, rules),
        model_state=state_shardings(model_state, mesh, rules),
        opt_state=opt_sh,
        step=replicated,
        rng=replicated,
    )


def init_train_state(params, model_state, optimizer, mesh: Mesh, seed: int, rules: Rules = DEFAULT_RULES):
    """TrainState with the optimizer state born sharded like the parameters."""
    shardings = train_state_shardings(params, model_state, optimizer, mesh, rules)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    return TrainState(
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
        rng=jax.device_put(jax.random.key_data(jax.random.key(seed)), shardings.rng),
    )
