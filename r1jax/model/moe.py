"""DeepSeekMoE: shared experts + fine-grained routed experts (DeepSeek-V3 §2.1.2, eq. 12-20).

Routing: sigmoid affinities s = σ(x W_r); selection uses s + b (b = RouterBias, the aux-loss-free
balancing bias, never in the gradient), restricted to the best `topk_group` of `n_group` groups;
the gate values use s alone, normalised over the K_r chosen and scaled by routed_scaling_factor.

Routing replay (R3): the caller may hand in the expert ids (e.g. the ones the sampler used for the
same token), so the trainer's forward runs the tokens through exactly the experts the rollout did.
The gate values are then the current scores at those ids, normalised and scaled as above
(`gates_at`): the router weights still get gradients through the replayed experts' gates, and the
selection bias plays no part (it only ever selects). `router_disagreement` measures how often two
routings differ.

Dispatch is dropless: token-expert pairs are sorted by expert and run through a grouped matmul
(`jax.lax.ragged_dot`), then unsorted and combined. `moe_einsum` (every expert on every token,
masked by the gates) is the reference the tests hold it to. With an `expert` mesh axis > 1 the
dispatch runs under shard_map, in one of two ways (ModelConfig.moe_dispatch):
  "all_gather"  tokens are gathered over the expert axis, every shard applies its local experts, and
                psum_scatter returns each token's sum to its home shard. Exact and dropless, but every
                shard holds every token of the axis (temporaries grow with the expert axis).
  "all_to_all"  each shard packs its (token, expert) assignments into one fixed-capacity buffer per
                expert shard, all_to_all sends each buffer to its owner, the owner runs its experts
                and all_to_all sends the rows back (GShard/Switch style). Temporaries scale with the
                local tokens; assignments past a buffer's capacity are dropped (they contribute zero)
                and MoEOut.dropped_frac reports the share.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from r1jax.model.config import ModelConfig
from r1jax.model.layers import MLP, normal, param


class RouterBias(nnx.Variable):
    """Per-expert selection bias b_i (aux-loss-free load balancing); not a trainable parameter."""


def gates_at(scores_ne, idx_nk, cfg: ModelConfig):
    """Gate weights [N, K] float32 of the experts idx_nk: their sigmoid scores (no bias), normalised
    over the K chosen when norm_topk_prob, times routed_scaling_factor. Differentiable in the scores."""
    w_nk = jnp.take_along_axis(scores_ne, idx_nk, axis=1)
    if cfg.norm_topk_prob:
        w_nk = w_nk / (w_nk.sum(-1, keepdims=True) + 1e-20)
    return w_nk * cfg.routed_scaling_factor


def router_scores(x_nd, w_de):
    """Sigmoid affinities s = σ(x W_r), float32 [N, E]."""
    return jax.nn.sigmoid(jnp.einsum("nd,de->ne", x_nd.astype(jnp.float32), w_de.astype(jnp.float32)))


def select_experts(scores_ne, bias_e, cfg: ModelConfig):
    """The router's own choice: top-K of s + b within the best topk_group groups -> int32 [N, K]."""
    choice = scores_ne + jax.lax.stop_gradient(bias_e.astype(jnp.float32))
    e, g = cfg.n_routed_experts, cfg.n_group
    if g > 1:
        # group score = sum of the group's two best biased affinities (node-limited routing)
        group_scores = jax.lax.top_k(choice.reshape(-1, g, e // g), 2)[0].sum(-1)
        top_groups = jax.lax.top_k(group_scores, cfg.topk_group)[1]
        keep_ng = jnp.zeros_like(group_scores, dtype=bool).at[
            jnp.arange(group_scores.shape[0])[:, None], top_groups].set(True)
        choice = jnp.where(jnp.repeat(keep_ng, e // g, axis=1), choice, -jnp.inf)
    return jax.lax.top_k(choice, cfg.n_experts_per_tok)[1].astype(jnp.int32)


def route(x_nd, w_de, bias_e, cfg: ModelConfig, idx_nk=None):
    """-> gate weights [N, K] float32, expert ids [N, K] int32, sigmoid scores [N, E] float32.

    idx_nk=None: the router selects (top-K of s + b within the top groups). Replay: given expert ids
    idx_nk [N, K] are used as they are (no selection, the bias plays no part) and the gates are
    `gates_at(s, idx_nk)` = take_along_axis(s, idx_nk), normalised over the K if norm_topk_prob, times
    routed_scaling_factor: exactly the rule of a selected choice, so gradients reach the router
    through the replayed experts' gate values."""
    scores = router_scores(x_nd, w_de)
    if idx_nk is None:
        idx_nk = select_experts(scores, bias_e, cfg)
    return gates_at(scores, idx_nk.astype(jnp.int32), cfg), idx_nk.astype(jnp.int32), scores


def router_disagreement(routing_a, routing_b, mask):
    """How often two routings of the same tokens differ, over the tokens where `mask` is nonzero.

    routing_a, routing_b: int32 [..., n_layers, K] expert ids (e.g. [B, T, L, K] of ModelAux.routing_btlk
    and Rollout.routing_btlk); mask: [...] (e.g. [B, T]). Order within the K is ignored (sets).
    -> {"set_frac": fraction of (token, layer) pairs whose expert sets differ,
        "slot_frac": fraction of (token, layer, slot) entries of routing_a whose expert is not in
                     routing_b's set for that (token, layer)}, float32 scalars (0 when the mask is empty).
    Pure jnp (jit-able)."""
    if routing_a.shape != routing_b.shape:
        raise ValueError(f"router_disagreement: shapes differ, {routing_a.shape} vs {routing_b.shape}")
    if mask.shape != routing_a.shape[:-2]:
        raise ValueError(f"router_disagreement: mask shape {mask.shape} != routing shape[:-2] "
                         f"{routing_a.shape[:-2]}")
    # [..., L, K, K]: is slot i of a equal to slot j of b; ids within one set are distinct
    in_b = jnp.any(routing_a[..., :, None] == routing_b[..., None, :], axis=-1)
    missing = (~in_b).astype(jnp.float32)  # [..., L, K]
    m = (mask != 0).astype(jnp.float32)[..., None]  # [..., 1]
    n_layers, k = routing_a.shape[-2:]
    n_pairs = jnp.maximum(jnp.sum(m) * n_layers, 1.0)
    set_frac = jnp.sum(jnp.any(missing > 0, axis=-1) * m) / n_pairs
    slot_frac = jnp.sum(missing.sum(-1) * m) / (n_pairs * k)
    return {"set_frac": set_frac, "slot_frac": slot_frac}


def moe_einsum(x_nd, idx_nk, w_nk, w_gate_edf, w_up_edf, w_down_efd):
    """Reference: every expert on every token, combined with the (mostly zero) gate matrix."""
    n = x_nd.shape[0]
    gates_ne = jnp.zeros((n, w_gate_edf.shape[0]), jnp.float32).at[jnp.arange(n)[:, None], idx_nk].add(w_nk)
    h = jax.nn.silu(jnp.einsum("nd,edf->nef", x_nd, w_gate_edf)) * jnp.einsum("nd,edf->nef", x_nd, w_up_edf)
    y = jnp.einsum("nef,efd->ned", h, w_down_efd)
    return jnp.einsum("ned,ne->nd", y.astype(jnp.float32), gates_ne).astype(x_nd.dtype)


def _grouped_ffn(xs_md, sizes_e, w_gate_edf, w_up_edf, w_down_efd):
    """SwiGLU of rows sorted by expert (sizes_e rows per expert, the rest after them) -> float32 [M, d]."""
    h = jax.nn.silu(jax.lax.ragged_dot(xs_md, w_gate_edf, sizes_e)) * jax.lax.ragged_dot(xs_md, w_up_edf, sizes_e)
    return jax.lax.ragged_dot(h, w_down_efd, sizes_e).astype(jnp.float32)


def moe_ragged(x_nd, idx_nk, w_nk, w_gate_edf, w_up_edf, w_down_efd, expert_offset=0):
    """Dropless sort + ragged_dot over the experts [expert_offset, expert_offset + E_local);
    assignments to other experts contribute zero (they belong to another shard)."""
    n, k = idx_nk.shape
    e_local = w_gate_edf.shape[0]
    flat_e = idx_nk.reshape(-1) - expert_offset
    local = (flat_e >= 0) & (flat_e < e_local)
    key = jnp.where(local, flat_e, e_local)  # foreign assignments sort after all local groups
    order = jnp.argsort(key, stable=True)
    tok = order // k
    sizes = jnp.zeros((e_local + 1,), jnp.int32).at[key].add(1)[:e_local]
    y = _grouped_ffn(x_nd[tok], sizes, w_gate_edf, w_up_edf, w_down_efd)
    wts = jnp.where(local, w_nk.reshape(-1), 0.0)[order]
    y = jnp.where(local[order][:, None], y * wts[:, None], 0.0)
    return jnp.zeros((n, x_nd.shape[1]), jnp.float32).at[tok].add(y).astype(x_nd.dtype)


def _active_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def moe_expert_parallel(x_nd, idx_nk, w_nk, w_gate_edf, w_up_edf, w_down_efd, mesh):
    """moe_ragged with experts split over the `expert` mesh axis (shard_map).

    Tokens are split over every batch axis of the mesh (padded with zero-gate rows to a multiple of
    their product, e.g. for a decode step), gathered over `expert`, and each shard's partial sums
    psum_scatter back. One path for every batch size: a replicated-token variant with a plain psum
    gave wrong input gradients in jax 0.10 (tests/model/test_sharding.py would catch it)."""
    batch_axes = tuple(a for a in ("data", "fsdp", "expert") if a in mesh.axis_names)
    n = x_nd.shape[0]
    split = math.prod(mesh.shape[a] for a in batch_axes)
    pad = -n % split
    if pad:
        x_nd = jnp.pad(x_nd, ((0, pad), (0, 0)))
        idx_nk = jnp.pad(idx_nk, ((0, pad), (0, 0)))
        w_nk = jnp.pad(w_nk, ((0, pad), (0, 0)))  # zero gates: padded rows contribute nothing

    def local(x, idx, w, wg, wu, wd):
        # every expert shard sees the tokens of its expert-axis peers
        x, idx, w = (jax.lax.all_gather(a, "expert", axis=0, tiled=True) for a in (x, idx, w))
        y = moe_ragged(x, idx, w, wg, wu, wd, expert_offset=jax.lax.axis_index("expert") * wg.shape[0])
        return jax.lax.psum_scatter(y, "expert", scatter_dimension=0, tiled=True)

    tok, w_spec = P(batch_axes), P("expert")
    y = jax.shard_map(local, mesh=mesh, in_specs=(tok, tok, tok, w_spec, w_spec, w_spec),
                      out_specs=tok)(x_nd, idx_nk, w_nk, w_gate_edf, w_up_edf, w_down_efd)
    return y[:n]


def a2a_capacity(n_local: int, k: int, n_shards: int, factor: float) -> int:
    """Rows of one (source shard, expert shard) buffer: C = ceil(factor · n_local·K / n_shards), the
    balanced share of a source's assignments times `factor`, rounded up to a multiple of 8 (whole
    sublanes on TPU) and at most n_local·K (a shard never sends more; factor >= n_shards never drops)."""
    c = math.ceil(factor * n_local * k / n_shards)
    return max(1, min(-(-c // 8) * 8, n_local * k))


def _expert_rows(x_md, e_m, w_gate_edf, w_up_edf, w_down_efd):
    """Row i through local expert e_m[i] (sort + ragged_dot, unsorted back) -> float32 [M, d]; rows
    whose e_m is outside [0, E_local) (empty buffer slots) give zero."""
    e_local = w_gate_edf.shape[0]
    valid = (e_m >= 0) & (e_m < e_local)
    key = jnp.where(valid, e_m, e_local)
    order = jnp.argsort(key, stable=True)
    sizes = jnp.zeros((e_local + 1,), jnp.int32).at[key].add(1)[:e_local]
    y = _grouped_ffn(x_md[order], sizes, w_gate_edf, w_up_edf, w_down_efd)
    y = jnp.where(valid[order][:, None], y, 0.0)
    return jnp.zeros_like(y).at[order].set(y)


def _pack_slots(idx_nk, keep_n, e_local: int, n_shards: int, capacity: int):
    """Where each (token, expert) assignment goes in the send buffer [n_shards · capacity].

    Within one destination shard, assignments queue in the order (kept tokens first, then masked or
    padding tokens; then token index; then slot k) and the first `capacity` get a row. -> slot_a int32
    [N·K] (n_shards · capacity = dropped), src_m int32 [n_shards · capacity] (the assignment filling
    each row; N·K = empty)."""
    a = idx_nk.size
    dest_a = idx_nk.reshape(-1) // e_local
    late_a = jnp.repeat(~keep_n, idx_nk.shape[1]).astype(jnp.int32)
    order = jnp.argsort(dest_a * 2 + late_a, stable=True)
    count_s = jnp.zeros((n_shards,), jnp.int32).at[dest_a].add(1)
    start_s = jnp.cumsum(count_s) - count_s
    pos_a = jnp.zeros((a,), jnp.int32).at[order].set(jnp.arange(a, dtype=jnp.int32) - start_s[dest_a[order]])
    slot_a = jnp.where(pos_a < capacity, dest_a * capacity + pos_a, n_shards * capacity)
    src_m = jnp.full((n_shards * capacity + 1,), a, jnp.int32).at[slot_a].set(jnp.arange(a, dtype=jnp.int32))
    return slot_a, src_m[:-1]


def moe_all_to_all(x_nd, idx_nk, w_nk, w_gate_edf, w_up_edf, w_down_efd, mesh, capacity_factor: float,
                   keep_n=None):
    """moe_ragged with experts split over the `expert` mesh axis, tokens moved by all_to_all.

    Tokens are split over every batch axis (padded as in moe_expert_parallel). Each shard packs its
    assignments into one buffer of C = a2a_capacity(...) rows per expert shard (order: `_pack_slots`),
    all_to_all delivers the buffers, each owner runs its experts on the rows it received, all_to_all
    returns them, and the source sums them with its gate weights. Assignments past capacity are
    dropped: they contribute exactly zero to the output and get no gradient (the token keeps its
    other experts and the shared expert). keep_n: bool [N], the tokens that matter (mask; None = all);
    the others queue last, so padding never takes a real token's row, and are not counted as drops.

    -> (y_nd, dropped_frac): dropped_frac = float32 scalar, dropped kept-token assignments over all
    kept-token assignments of the whole batch (0 when nothing dropped)."""
    batch_axes = tuple(a for a in ("data", "fsdp", "expert") if a in mesh.axis_names)
    n, k = idx_nk.shape
    n_shards = mesh.shape["expert"]
    e_local = w_gate_edf.shape[0] // n_shards
    split = math.prod(mesh.shape[a] for a in batch_axes)
    keep_n = jnp.ones((n,), bool) if keep_n is None else keep_n.astype(bool)
    pad = -n % split
    if pad:
        x_nd = jnp.pad(x_nd, ((0, pad), (0, 0)))
        idx_nk = jnp.pad(idx_nk, ((0, pad), (0, 0)))
        w_nk = jnp.pad(w_nk, ((0, pad), (0, 0)))  # zero gates: padded rows contribute nothing
        keep_n = jnp.pad(keep_n, (0, pad))  # and queue last
    n_local = (n + pad) // split
    capacity = a2a_capacity(n_local, k, n_shards, capacity_factor)

    def local(x, idx, w, keep, wg, wu, wd):
        a, d = idx.size, x.shape[1]
        slot_a, src_m = _pack_slots(idx, keep, e_local, n_shards, capacity)
        filled_m = src_m < a
        src_m = jnp.minimum(src_m, a - 1)
        x_send = jnp.where(filled_m[:, None], x[src_m // k], 0).astype(x.dtype)
        e_send = jnp.where(filled_m, idx.reshape(-1)[src_m] % e_local, e_local)  # e_local = empty row
        # row block j goes to expert shard j; what arrives is block i from source shard i
        x_recv = jax.lax.all_to_all(x_send, "expert", 0, 0, tiled=True)
        e_recv = jax.lax.all_to_all(e_send, "expert", 0, 0, tiled=True)
        y_recv = _expert_rows(x_recv, e_recv, wg, wu, wd).astype(x.dtype)
        y_back = jax.lax.all_to_all(y_recv, "expert", 0, 0, tiled=True)
        y_a = jnp.concatenate([y_back, jnp.zeros((1, d), y_back.dtype)])[slot_a]  # dropped -> zero row
        sent_a = slot_a < n_shards * capacity
        gate_a = jnp.where(sent_a, w.reshape(-1), 0.0)
        y = (y_a.astype(jnp.float32) * gate_a[:, None]).reshape(-1, k, d).sum(1).astype(x.dtype)
        counted_a = jnp.repeat(keep, k)
        dropped = jax.lax.psum(jnp.sum(counted_a & ~sent_a), batch_axes)
        total = jax.lax.psum(jnp.sum(counted_a), batch_axes)
        return y, dropped.astype(jnp.float32) / jnp.maximum(total, 1).astype(jnp.float32)

    tok, w_spec = P(batch_axes), P("expert")
    y, dropped_frac = jax.shard_map(
        local, mesh=mesh, in_specs=(tok, tok, tok, tok, w_spec, w_spec, w_spec), out_specs=(tok, P()),
    )(x_nd, idx_nk, w_nk, keep_n, w_gate_edf, w_up_edf, w_down_efd)
    return y[:n], jax.lax.stop_gradient(dropped_frac)


def seq_aux_loss(scores_bte, idx_btk, mask_bt, cfg: ModelConfig):
    """Sequence-wise balance loss (DeepSeek-V3 eq. 17-20): α Σ_i f_i P_i per sequence, batch mean.
    f_i = N_r/(K_r T) · #tokens choosing i;  P_i = mean_t of the normalised affinity s_i / Σ_j s_j."""
    e, k = cfg.n_routed_experts, cfg.n_experts_per_tok
    m = mask_bt.astype(jnp.float32)
    t_valid = jnp.maximum(m.sum(-1), 1.0)  # [B]
    chosen_bte = jax.nn.one_hot(idx_btk, e, dtype=jnp.float32).sum(-2) * m[..., None]
    f_be = chosen_bte.sum(1) * e / (k * t_valid[:, None])
    s_norm = scores_bte / scores_bte.sum(-1, keepdims=True)
    p_be = (s_norm * m[..., None]).sum(1) / t_valid[:, None]
    return cfg.seq_aux_alpha * jnp.mean(jnp.sum(f_be * p_be, -1))


class MoEOut(NamedTuple):
    y_btd: jax.Array
    expert_load_e: jax.Array
    """[E] fraction of the (unmasked) routed assignments per expert; no gradient."""
    aux_loss: jax.Array
    routing_btk: jax.Array
    """int32 [B, T, K]: the experts each token ran through (the replayed ids under replay)."""
    choice_btk: jax.Array
    """int32 [B, T, K]: the router's own choice (top-K of s + b); equals routing_btk without replay."""
    dropped_frac: jax.Array
    """float32 scalar, no gradient: the share of the (unmasked) token-expert assignments dropped for
    lack of capacity (moe_dispatch="all_to_all" on an expert axis > 1); 0 on the dropless paths."""


class MoE(nnx.Module):
    """Routed experts + shared experts. `__call__` returns (y, expert_load_e, aux_loss); `forward` also
    takes replayed expert ids and returns the ids it used."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, d, f = cfg.n_routed_experts, cfg.d_model, cfg.moe_mlp_dim
        pdt = cfg.jnp_param_dtype
        self.gate = Router(cfg, rngs=rngs)
        self.w_gate = param(normal(rngs, (e, d, f), cfg.init_std, pdt), ("exp", "embed", "mlp"))
        self.w_up = param(normal(rngs, (e, d, f), cfg.init_std, pdt), ("exp", "embed", "mlp"))
        self.w_down = param(normal(rngs, (e, f, d), cfg.init_std, pdt), ("exp", "mlp", "embed"))
        self.shared_experts = MLP(cfg, f * cfg.n_shared_experts, rngs=rngs) if cfg.n_shared_experts else None

    def __call__(self, x_btd, mask_bt=None):
        out = self.forward(x_btd, mask_bt)
        return out.y_btd, out.expert_load_e, out.aux_loss

    def forward(self, x_btd, mask_bt=None, routing_btk=None) -> MoEOut:
        """The layer with optional routing replay. routing_btk: int32 [B, T, K] expert ids to use
        instead of the router's choice (gates: `route`); the load and the balance loss then count the
        replayed assignments (the ones that ran), the balance loss with the current scores."""
        cfg = self.cfg
        b, t, d = x_btd.shape
        x_nd = x_btd.reshape(b * t, d)
        bias_e = self.gate.e_score_correction_bias[...]
        given_nk = None
        if routing_btk is not None:
            if routing_btk.shape != (b, t, cfg.n_experts_per_tok):
                raise ValueError(f"MoE: routing_btk shape {routing_btk.shape} != {(b, t, cfg.n_experts_per_tok)} "
                                 "(batch, length, n_experts_per_tok)")
            given_nk = routing_btk.reshape(b * t, cfg.n_experts_per_tok)
        w_nk, idx_nk, scores_ne = route(x_nd, self.gate.kernel[...], bias_e, cfg, given_nk)
        # what the router would pick itself: idx_nk, or under replay a top-K that only a disagreement
        # metric reads (dead code, removed by XLA, when nobody does)
        choice_nk = idx_nk if given_nk is None else select_experts(scores_ne, bias_e, cfg)
        dt = cfg.jnp_dtype
        weights = tuple(w[...].astype(dt) for w in (self.w_gate, self.w_up, self.w_down))
        mask_bt = jnp.ones((b, t), bool) if mask_bt is None else mask_bt
        mesh = _active_mesh()
        dropped_frac = jnp.zeros((), jnp.float32)
        if cfg.moe_impl == "einsum":
            y_nd = moe_einsum(x_nd, idx_nk, w_nk, *weights)
        elif mesh is not None and "expert" in mesh.axis_names and mesh.shape["expert"] > 1:
            if cfg.moe_dispatch == "all_to_all":
                y_nd, dropped_frac = moe_all_to_all(x_nd, idx_nk, w_nk, *weights, mesh, cfg.moe_capacity_factor,
                                                    keep_n=mask_bt.reshape(-1) != 0)
            else:
                y_nd = moe_expert_parallel(x_nd, idx_nk, w_nk, *weights, mesh)
        else:
            y_nd = moe_ragged(x_nd, idx_nk, w_nk, *weights)
        y = y_nd.reshape(b, t, d)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x_btd)

        m_n = mask_bt.reshape(-1).astype(jnp.float32)
        counts_e = jnp.zeros((cfg.n_routed_experts,), jnp.float32).at[idx_nk].add(
            jnp.broadcast_to(m_n[:, None], idx_nk.shape))
        load_e = counts_e / jnp.maximum(counts_e.sum(), 1.0)
        if cfg.seq_aux_alpha > 0:
            aux = seq_aux_loss(scores_ne.reshape(b, t, -1), idx_nk.reshape(b, t, -1), mask_bt, cfg)
        else:
            aux = jnp.zeros((), jnp.float32)
        return MoEOut(y, jax.lax.stop_gradient(load_e), aux, idx_nk.reshape(b, t, -1), choice_nk.reshape(b, t, -1),
                      dropped_frac)


class Router(nnx.Module):
    """kernel [d, E] (HF `gate.weight` transposed) and the selection bias (HF `e_score_correction_bias`)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        shape = (cfg.d_model, cfg.n_routed_experts)
        self.kernel = param(normal(rngs, shape, cfg.init_std, cfg.jnp_param_dtype), ("embed", None))
        # float32 always: updates of size `rate` must not round away (transformers keeps it fp32 too)
        self.e_score_correction_bias = RouterBias(jnp.zeros((cfg.n_routed_experts,), jnp.float32))


def update_router_bias(state, expert_load_le, rate: float):
    """Aux-loss-free balancing (DeepSeek-V3 §2.1.2): b_i += rate · sign(mean load − load_i), per MoE
    layer in order. `state` is an nnx.State holding the RouterBias variables (the full model state
    or the non-param part); returns a new State. Pure: call it outside the gradient, inside jit.
    A RouterBias of the scanned layout (model/scan.py) is [L_run, E], one row per layer of its run,
    and takes the next L_run rows of expert_load_le (the variables' path order is the layer order in
    both layouts: layers/ or moe_layers/, then mtp/)."""
    flat = list(nnx.to_flat_state(state))
    paths = [i for i, (_, v) in enumerate(flat) if isinstance(v, RouterBias)]
    n_rows = [1 if flat[i][1].ndim == 1 else flat[i][1].shape[0] for i in paths]
    if sum(n_rows) != expert_load_le.shape[0]:
        raise ValueError(f"update_router_bias: state has RouterBias variables for {sum(n_rows)} MoE layers but "
                         f"expert_load_le has {expert_load_le.shape[0]} rows (one per MoE layer expected)")
    row = 0
    for i, n in zip(paths, n_rows):
        path, var = flat[i]
        load_le = expert_load_le[row:row + n].astype(jnp.float32).reshape(var.shape)
        new = var[...] + rate * jnp.sign(jnp.mean(load_le, axis=-1, keepdims=True) - load_le)
        flat[i] = (path, var.replace(new))
        row += n
    return nnx.from_flat_state(flat)
