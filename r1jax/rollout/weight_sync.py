"""Weight sync for a sampler on its own mesh: reshard the trainer's parameters device to device.

The trainer's state lives on the training mesh (e.g. fsdp=8); a sampler may want another layout
(e.g. data=2 x tensor=4, so decode steps shard heads instead of gathering FSDP shards every step) or
other devices. `reshard` computes the sampler's shardings from the same logical axes and rules
table the model was created with and moves every variable with `jax.device_put`, which XLA executes
as shard-to-shard transfers: no device, and not the host, ever holds a full copy of a sharded weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from r1jax.model.api import state_shardings
from r1jax.parallel.rules import DEFAULT_RULES, Rules


def sampler_shardings(state, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """The shardings the sampler on `mesh` expects for a model state (abstract or concrete)."""
    return state_shardings(state, mesh, rules)


def reshard(state, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, dtype=None, donate: bool = False):
    """Model state (nnx.State of the trainer) -> the same values laid out for the sampler's mesh.

    dtype: cast floating-point variables after the move (e.g. bfloat16: the sampler reads half the
    bytes per decode step while the trainer keeps float32 masters); the cast runs on the sampler's
    devices, shard by shard. donate=True frees the source buffers (when the trainer's copy is no
    longer needed, e.g. a colocated sampler that takes over the devices)."""
    shardings = sampler_shardings(state, mesh, rules)
    moved = jax.device_put(state, shardings, donate=donate)
    if dtype is None:
        return moved

    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    # donate the moved copy only: onto the mesh it already lives on, device_put returns the caller's own
    # arrays, and donating those would delete them under the caller
    own = any(a is b for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(state)))
    return jax.jit(lambda s: jax.tree.map(cast, s), out_shardings=shardings, donate_argnums=() if own else 0)(moved)
