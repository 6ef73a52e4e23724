"""Host <-> device crossings that hold on one process and on many (multi-controller JAX).

With several JAX processes (a TPU pod's hosts, `r1jax launch` on one machine) an array spans devices
that other processes own. Three rules keep every stage correct there, and this module is where they
live, once:

- Values every process holds identically (the global prompt batch, advantages, a sampling key) enter
  with `put`: each process hands over only the slices its own devices hold
  (`jax.make_array_from_callback`). Values that differ per process (each host's share of an SFT batch)
  enter with `put_process_local` (`jax.make_array_from_process_local_data`).
- Arrays come back with `owned_rows` / `local_rows` (this process's rows, read from its own shards:
  texts are decoded where the rows live) or, for small arrays every host needs, `fetch` (all-gather).
- Host results are exchanged with `allgather`: each process works on its `share` of a list (its rows'
  rewards from its own reward server) and every process ends with the whole list, so host code after it
  (advantages, metrics, evaluation) sees the same global values on every process.

On a single process each of these is the plain jax call it replaces.
"""

from __future__ import annotations

import pickle

import jax
import numpy as np
from jax.sharding import NamedSharding, Sharding


def process_count() -> int:
    return jax.process_count()


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def _global_leaf(x, sharding: Sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: a reshard, compiled by XLA
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(x))
        return jax.random.wrap_key_data(_global_leaf(data, sharding), impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def put(tree, sharding):
    """Places a pytree whose value is the same on every process onto `sharding` (one sharding for every
    leaf, or a matching pytree of them). Each process transfers only the slices of its own devices; host
    values may be numpy arrays or local jax arrays; global arrays are resharded."""
    if not is_multiprocess():
        return jax.device_put(tree, sharding)
    if isinstance(sharding, Sharding):
        return jax.tree.map(lambda x: _global_leaf(x, sharding), tree)
    return jax.tree.map(_global_leaf, tree, sharding)


def put_process_local(tree, sharding: NamedSharding):
    """Places a pytree of process-local row blocks (this process's rows of a batch split over the
    processes in order) as global arrays of process_count() x the rows."""
    if not is_multiprocess():
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def fetch(tree):
    """The whole value of every leaf as numpy, on every process (all-gathers arrays that span other
    processes' devices; keep it to small arrays)."""
    if not is_multiprocess():
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def owned_rows(x: jax.Array) -> np.ndarray:
    """The global row indices (axis 0) this process answers for: the rows of its own devices' shards, a
    row held by several processes (replicated) belonging to the lowest process index holding it. Over
    all processes they partition the rows."""
    n = x.shape[0]
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.arange(n)
    me = jax.process_index()
    first_holder = np.full(n, np.iinfo(np.int32).max, np.int64)
    for device, index in x.sharding.devices_indices_map(x.shape).items():
        rows = np.arange(n)[index[0]]
        first_holder[rows] = np.minimum(first_holder[rows], device.process_index)
    return np.flatnonzero(first_holder == me)


def local_rows(x: jax.Array, rows: np.ndarray) -> np.ndarray:
    """x[rows] as numpy, read from this process's own shards (rows held here, e.g. owned_rows; arrays
    split along rows only, as every rollout and batch array is)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))[rows]
    out = np.empty((len(rows), *x.shape[1:]), x.dtype)
    where = {int(r): i for i, r in enumerate(rows)}
    for shard in x.addressable_shards:
        if shard.data.shape[1:] != x.shape[1:]:
            raise ValueError(f"local_rows: a shard of {x.shape} is split beyond its rows ({shard.data.shape})")
        held = np.arange(x.shape[0])[shard.index[0]]
        pairs = [(i, where[int(r)]) for i, r in enumerate(held) if int(r) in where]
        if pairs:
            src, dst = (list(v) for v in zip(*pairs))
            out[dst] = np.asarray(shard.data)[src]
    return out


def share(n: int) -> slice:
    """This process's contiguous share of n items (the first n % P processes take one more)."""
    p, i = jax.process_count(), jax.process_index()
    base, extra = divmod(n, p)
    start = i * base + min(i, extra)
    return slice(start, start + base + (i < extra))


def allgather(obj) -> list:
    """Every process's `obj` (any picklable value), in process order, on every process."""
    if not is_multiprocess():
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [pickle.loads(gathered[i, : sizes[i]].tobytes()) for i in range(len(sizes))]


def gather_rows(rows: np.ndarray, values: list, n: int) -> list:
    """The full list of n values, each process having computed values[j] for global row rows[j]."""
    out = [None] * n
    for rows_p, values_p in allgather((np.asarray(rows), list(values))):
        for r, v in zip(rows_p, values_p):
            out[int(r)] = v
    return out


def sync(name: str) -> None:
    """A barrier over every process (no-op on one)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
