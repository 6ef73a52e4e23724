"""Functional entry points: apply over split state, sharded creation, parameter counts.

    graphdef, state = create_sharded(cfg, mesh, seed)      # params born sharded, no full copy
    hidden_btd, cache, aux = apply(graphdef, state, tokens_bt, positions_bt)
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.model.config import ModelConfig
from r1jax.model.transformer import Transformer
from r1jax.parallel.rules import DEFAULT_RULES, Rules, logical_to_spec


def apply(graphdef, state, tokens_bt, positions_bt, segment_ids_bt=None, cache=None, routing_btlk=None):
    """Pure forward over split state (call inside jit): -> (hidden_btd, new_cache, ModelAux).
    routing_btlk: replayed expert ids (Transformer.__call__)."""
    model = nnx.merge(graphdef, state)
    return model(tokens_bt, positions_bt, segment_ids_bt=segment_ids_bt, cache=cache, routing_btlk=routing_btlk)


def _fit(shape, spec: P, mesh: Mesh) -> P:
    """Drops mesh axes that do not evenly divide their dimension (e.g. 14 heads on tensor=4):
    that dimension stays replicated rather than failing."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes_t = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        keep, size = [], 1
        for a in axes_t:
            if dim % (size * mesh.shape[a]) == 0:
                keep.append(a)
                size *= mesh.shape[a]
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return P(*out)


def logical_axes(state):
    """The logical axis names of every variable (None for unannotated ones, e.g. RouterBias)."""
    return jax.tree.map(lambda v: v.get_metadata().get("out_sharding"), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """NamedSharding for every variable of an (abstract or concrete) state, from its logical axes
    through the rules table; unannotated variables are replicated."""

    def one(v):
        names = v.get_metadata().get("out_sharding")
        spec = P() if names is None else _fit(v.shape, logical_to_spec(names, rules), mesh)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_model(cfg: ModelConfig, rng_seed: int = 0):
    """(graphdef, abstract state of jax.ShapeDtypeStruct): shapes only, nothing allocated."""
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(rng_seed)))
    return nnx.split(model)


def create_sharded(cfg: ModelConfig, mesh: Mesh, rng_seed: int = 0, rules: Rules = DEFAULT_RULES):
    """(graphdef, state) with every variable created directly in its sharding: the init is jitted
    with out_shardings, so no device ever holds a full copy of a sharded parameter."""
    graphdef, abstract = abstract_model(cfg, rng_seed)
    shardings = state_shardings(abstract, mesh, rules)

    def init():
        return nnx.split(Transformer(cfg, rngs=nnx.Rngs(rng_seed)))[1]

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state


def cache_shardings(cache, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Shardings for a KV cache from `init_cache`: batch over the batch axes, GQA heads over kv_heads."""
    names = {"k": ("batch", "cache_length", "kv_heads", "head_dim"),
             "v": ("batch", "cache_length", "kv_heads", "head_dim"),
             "c_kv": ("batch", "cache_length", "kv_lora"),
             "k_rope": ("batch", "cache_length", "head_dim")}
    return tuple({k: NamedSharding(mesh, _fit(x.shape, logical_to_spec(names[k], rules), mesh))
                  for k, x in layer.items()} for layer in cache)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts from shapes only (jax.eval_shape; nothing allocated).

    total: every trainable parameter including MTP modules; main: without MTP;
    active_per_token: main parameters a token touches — all non-expert weights plus K_r of the
    N_r routed experts in each MoE layer (the embedding table counts once, as in DeepSeek-V3's 37B)."""
    _, abstract = abstract_model(cfg)
    flat = nnx.to_flat_state(abstract)
    total = main = routed = 0
    for path, v in flat:
        if not isinstance(v, nnx.Param):
            continue
        n = math.prod(v.shape)
        total += n
        if path[0] == "mtp":
            continue
        main += n
        if path[-1] in ("w_gate", "w_up", "w_down"):
            routed += n
    active = main - routed + routed * cfg.n_experts_per_tok // max(cfg.n_routed_experts, 1)
    return {"total": total, "main": main, "mtp": total - main, "active_per_token": active}



def model_flops_per_token(cfg: ModelConfig, length: int) -> float:
    """Training (forward + backward) FLOPs per token, PaLM convention: 6 · N_matmul + attention
    6 · layers · heads · (d_qk + d_v) · length (scores and values, counted non-causally). N_matmul is
    the active parameters minus an untied embedding table, whose lookup is no matmul."""
    n = param_counts(cfg)["active_per_token"]
    if not cfg.tie_word_embeddings:
        n -= cfg.vocab_size * cfg.d_model
    d_qk, d_v = (cfg.qk_head_dim, cfg.v_head_dim) if cfg.attention == "mla" else (cfg.d_head, cfg.d_head)
    return 6.0 * n + 6.0 * cfg.n_layers * cfg.n_heads * (d_qk + d_v) * length


def replicated_params(state, min_size: int = 1 << 16) -> list[str]:
    """Paths of parameters with >= min_size elements that are fully replicated on a multi-device
    mesh: the start-up guardrail (a forgotten logical axis silently costs a full copy per device)."""
    out = []
    for path, v in nnx.to_flat_state(state):
        arr = v[...]
        if (isinstance(v, nnx.Param) and arr.size >= min_size and len(arr.sharding.device_set) > 1
                and arr.sharding.is_fully_replicated):
            out.append("/".join(map(str, path)))
    return out
