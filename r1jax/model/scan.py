"""Scanned layers: the main stack as runs of identical blocks whose parameters are stacked.

Under `cfg.scan_layers` the blocks of each run (`layer_runs`: DeepSeek-V3's dense prefix, then its
MoE layers; a dense model is one run) live as ONE block whose every variable has a leading axis of
length L_run, logical name "layers". The training forward is then a `jax.lax.scan` over that axis:
one compiled block body per run instead of one per layer, and under `cfg.remat` only the residual
stream [B, T, d] of each layer is kept for the backward pass.

Parameter paths of the two layouts (a checkpoint of either loads into the other through these):

    unrolled (scan_layers=False)           scanned (scan_layers=True)
    layers/{i}/<block path>   [...]        dense_layers/<block path>  [L_dense, ...]   i < first_k_dense
                                           moe_layers/<block path>    [L_moe, ...]     i >= first_k_dense

Everything else (embed_tokens, norm, lm_head, mtp/...) is the same in both. `stack_layers` and
`unstack_layers` are pure functions of an nnx.State (the full model state, or only its params, or
only its RouterBias part, or gradients), so HF/GGUF import (which builds the unrolled layout) feeds a
scanned model and export unstacks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.config import ModelConfig

LAYERS_AXIS = "layers"


class Run(NamedTuple):
    name: str
    """Attribute of the Transformer holding the stacked block, and the first key of its paths."""
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def layer_runs(cfg: ModelConfig) -> tuple[Run, ...]:
    """The runs of identical blocks of the main stack, in layer order (empty runs left out)."""
    split = cfg.first_k_dense if cfg.is_moe else cfg.n_layers
    runs = (Run("dense_layers", 0, split), Run("moe_layers", split, cfg.n_layers))
    return tuple(r for r in runs if r.size > 0)


def _with_names(var: nnx.Variable, value, names):
    """var with a new value and logical axis names; unannotated variables (RouterBias) stay so."""
    if var.get_metadata().get("out_sharding") is None:
        return var.replace(value)
    return var.replace(value, out_sharding=names)


def stack_variables(vars_: list[nnx.Variable]) -> nnx.Variable:
    """One Variable holding the values of `vars_` stacked on a new leading "layers" axis."""
    names = vars_[0].get_metadata().get("out_sharding")
    return _with_names(vars_[0], jnp.stack([v[...] for v in vars_]),
                       None if names is None else (LAYERS_AXIS, *names))


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
    """A module like modules[0] whose variables are those of all `modules` stacked (same graphs)."""
    graphdef, first = nnx.split(modules[0])
    states = [first] + [nnx.split(m)[1] for m in modules[1:]]
    is_var = lambda x: isinstance(x, nnx.Variable)
    return nnx.merge(graphdef, jax.tree.map(lambda *vs: stack_variables(list(vs)), *states, is_leaf=is_var))


def _run_of(cfg: ModelConfig, layer: int) -> Run:
    return next(r for r in layer_runs(cfg) if r.start <= layer < r.stop)


def stack_layers(cfg: ModelConfig, state: nnx.State) -> nnx.State:
    """Unrolled layout -> scanned layout: every `layers/{i}/<p>` becomes row i - start of
    `<run>/<p>`. Entries outside `layers/` pass through, so a state already scanned comes back
    unchanged. A run must be complete in `state` (all its layers, or none, for each path)."""
    groups: dict[tuple, dict[int, nnx.Variable]] = {}
    out = []
    for path, var in nnx.to_flat_state(state):
        if path[0] != "layers":
            out.append((path, var))
            continue
        i = int(path[1])
        if not 0 <= i < cfg.n_layers:
            raise ValueError(f"stack_layers: state has layer {i}, but ModelConfig.n_layers={cfg.n_layers}")
        run = _run_of(cfg, i)
        groups.setdefault((run.name, *path[2:]), {})[i - run.start] = var
    for key, rows in groups.items():
        run = next(r for r in layer_runs(cfg) if r.name == key[0])
        if sorted(rows) != list(range(run.size)):
            missing = sorted(set(range(run.size)) - set(rows))
            raise ValueError(f"stack_layers: {'/'.join(map(str, key[1:]))} is missing for layers "
                             f"{[run.start + j for j in missing]} of {run.name} (layers {run.start}..{run.stop - 1})")
        out.append((key, stack_variables([rows[j] for j in range(run.size)])))
    return nnx.from_flat_state(out)


def unstack_layers(cfg: ModelConfig, state: nnx.State) -> nnx.State:
    """Scanned layout -> unrolled layout (the inverse of stack_layers): row j of `<run>/<p>` becomes
    `layers/{start + j}/<p>`. Entries outside the runs pass through unchanged."""
    runs = {r.name: r for r in layer_runs(cfg)}
    out = []
    for path, var in nnx.to_flat_state(state):
        run = runs.get(path[0])
        if run is None:
            if path[0] in ("dense_layers", "moe_layers"):
                raise ValueError(f"unstack_layers: state has {path[0]}, which ModelConfig (n_layers="
                                 f"{cfg.n_layers}, first_k_dense={cfg.first_k_dense}) does not")
            out.append((path, var))
            continue
        value = var[...]
        if value.shape[0] != run.size:
            raise ValueError(f"unstack_layers: {'/'.join(map(str, path))} has {value.shape[0]} rows, "
                             f"{run.name} has {run.size} layers")
        names = var.get_metadata().get("out_sharding")
        for j in range(run.size):
            out.append((("layers", run.start + j, *path[1:]),
                        _with_names(var, value[j], None if names is None else tuple(names[1:]))))
    return nnx.from_flat_state(out)


def is_scanned(state: nnx.State) -> bool:
    """Whether a model state (or part of one) is in the scanned layout."""
    return any(path[0] in ("dense_layers", "moe_layers") for path, _ in nnx.to_flat_state(state))


def to_layout(cfg: ModelConfig, state: nnx.State) -> nnx.State:
    """`state` (either layout) in the layout cfg.scan_layers asks for."""
    return stack_layers(cfg, state) if cfg.scan_layers else unstack_layers(cfg, state)
