"""The one table mapping logical axis names to mesh axes.

Modules name the axes of every parameter and of a few key activations with logical names
(`("embed", "mlp")`, `("batch", "length", "embed")`); this table decides where each one
lives on the mesh. A new parallelism strategy is a new table (or a config override),
never a model change.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# logical name -> mesh axis (or tuple of mesh axes, or None for replicated)
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    # activations
    ("batch", ("data", "fsdp", "expert")),  # every non-tensor axis splits the batch
    ("length", None),
    ("cache_length", None),
    # parameters
    ("embed", "fsdp"),  # FSDP shards the model dimension of every matrix
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("q_lora", None),
    ("kv_lora", None),
    ("latent", "fsdp"),  # input dim of the MLA up-projections (q_b, kv_b): FSDP splits it like embed
    ("mlp", "tensor"),
    ("exp", "expert"),
    ("layers", None),
    ("norm", None),
)


def logical_to_spec(names: Sequence[str | None] | None, rules: Rules = DEFAULT_RULES) -> P:
    """("embed", "mlp") -> P("fsdp", "tensor"). Unknown names raise; None stays replicated.

    A mesh axis is used at most once per spec (the first logical axis that claims it wins),
    as XLA requires.
    """
    if names is None:
        return P()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def logical_to_sharding(names, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules))


def _active_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def shard(x: jax.Array, names: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> jax.Array:
    """Constrains an activation's sharding by logical names; a no-op when no mesh is set
    (`jax.set_mesh(mesh)`), so the same model code runs unsharded in references and tests.
    Mesh axes that do not divide the dimension are dropped rather than failing."""
    mesh = _active_mesh()
    if mesh is None:
        return x
    spec = logical_to_spec(names, rules)
    fitted = []
    for dim, axes in zip(x.shape, tuple(spec) + (None,) * (x.ndim - len(spec))):
        if axes is None:
            fitted.append(None)
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        size = 1
        keep = []
        for a in axes_t:
            if dim % (size * mesh.shape[a]) == 0:
                keep.append(a)
                size *= mesh.shape[a]
        fitted.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return jax.lax.with_sharding_constraint(x, P(*fitted))
