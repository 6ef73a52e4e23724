"""TrainState: what every stage trains and checkpoints, created already sharded on the mesh.

    params, model_state = split_model_state(state)              # trainable / the rest (MoE RouterBias)
    shardings = train_state_shardings(params, model_state, optimizer, mesh)
    state = init_train_state(params, model_state, optimizer, mesh, seed)
    batch = shard_batch(batch, mesh)                            # any pytree of [B, ...] arrays
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.model import state_shardings
from r1jax.parallel import multihost
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


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """One sharding for every batch field: rows over the batch axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",), rules))


def shard_batch(batch, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Any pytree of [B, ...] arrays whose value every process holds alike (host arrays or arrays already
    on device) -> on device, rows split over the batch axes."""
    return multihost.put(batch, batch_sharding(mesh, rules))


def shard_local_batch(batch, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """A pytree of this process's rows (a host's share of a batch, processes in order) -> global arrays of
    the rows of every process, split over the batch axes."""
    return multihost.put_process_local(batch, batch_sharding(mesh, rules))


def copy_tree(tree):
    """Own buffers, same shardings: what a frozen copy (π_ref) needs when the update donates the state."""
    return jax.tree.map(lambda x: x.copy(), tree)


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
