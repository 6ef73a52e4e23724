"""The decoder: embed → L pre-norm blocks (attention + MLP or MoE) → final RMSNorm.

`Transformer.__call__` returns final-normed hidden states, never logits: the GRPO loss computes
log-probs in vocabulary chunks from `unembed_weight()` so [B, T, V] float32 never materialises.

Two layouts of the main stack (model/scan.py), chosen by `cfg.scan_layers`:
- unrolled (default): `layers` is an nnx.List of blocks run by a Python loop; HF-style per-layer
  parameter names, one compiled copy of the block per layer.
- scanned: each run of identical blocks (DeepSeek-V3: the dense prefix, then the MoE layers) is one
  block with stacked parameters ("layers" axis), and the cache-free forward is a jax.lax.scan over it.
  Decoding with a cache loops over the layers with static slices of the stacked parameters, so the
  cache stays a tuple of per-layer dicts of batch-leading arrays in both layouts (the sampler's contract).
`cfg.remat` wraps each block (unrolled) or the scan body (scanned) in jax.checkpoint with
`cfg.remat_policy` (`remat_policy`).

Routing replay (R3): `routing_btlk` hands every MoE layer of the main stack the expert ids to use
(moe.route: gates from the current scores at those ids, no selection, no bias), e.g. the ids the
sampler recorded, so the trainer's forward runs each token through the experts that generated it. The
MTP modules always route by themselves: decoding skips them, so there is no sampled routing to replay,
and their loss is an auxiliary next-next-token objective, not part of the policy's log-probs.
`ModelAux.routing_btlk` reports the ids every main-stack MoE layer used, replayed or not.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.attention import GQAttention, MLAttention
from r1jax.model.config import ModelConfig
from r1jax.model.layers import MLP, Embed, KeyStream, Linear, RMSNorm, rope_cos_sin
from r1jax.model.moe import MoE
from r1jax.model.scan import layer_runs, stack_modules
from r1jax.parallel.rules import shard

ACT = ("batch", "length", "embed")


class ModelAux(NamedTuple):
    expert_load_le: jax.Array
    """[n_moe_layers, n_experts]: fraction of routed (token, expert) assignments per expert; rows are the
    MoE layers in order, then the MoE blocks of the MTP modules (cfg.n_moe_layers counts both)."""
    aux_loss: jax.Array
    """Scalar: sum over MoE layers of the sequence-wise balance loss (0 when disabled or dense)."""
    mtp_hidden_kbtd: jax.Array | None = None
    """[D, B, T, d] multi-token-prediction hidden states (final-normed); entry k at position i predicts
    token i + k + 2. None without MTP modules or when decoding with a cache."""
    routing_btlk: jax.Array | None = None
    """int32 [B, T, L_r, K]: the experts token t ran through in each MoE layer of the main stack
    (L_r = main_moe_layers(cfg): MTP modules excluded; K = n_experts_per_tok), the given ids under
    replay. The input format of `routing_btlk=`. None for a model without MoE layers in its main stack."""
    router_choice_btlk: jax.Array | None = None
    """Same shape: each router's own top-K (with its selection bias). The same array as routing_btlk
    without replay; under replay, what the current router would have picked (router_disagreement
    against routing_btlk measures the mismatch replay removed, at the cost of one top-K per layer)."""
    dropped_frac: jax.Array | None = None
    """Scalar: mean over the MoE layers (MTP blocks included) of the fraction of routed (token, expert)
    assignments the capacity-bounded all_to_all dispatch dropped (0 on the dropless paths); None for a
    dense model."""


def main_moe_layers(cfg: ModelConfig) -> int:
    """L_r: MoE layers of the main stack (cfg.n_moe_layers less the MTP modules' MoE blocks)."""
    return sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.d_model, cfg)
        self.self_attn = (MLAttention if cfg.attention == "mla" else GQAttention)(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg)
        self.is_moe = cfg.is_moe_layer(layer)
        self.mlp = MoE(cfg, rngs=rngs) if self.is_moe else MLP(cfg, cfg.mlp_dim, rngs=rngs)

    def __call__(self, x_btd, positions_bt, cos_sin, segment_ids_bt, cache, mask_bt, routing_btk=None):
        """-> (x_btd, cache, stats): stats is the MoE layer's MoEOut minus its output, None for a dense
        block. routing_btk: replayed expert ids of an MoE block (moe.MoE.forward)."""
        h, cache = self.self_attn(self.input_layernorm(x_btd), positions_bt, cos_sin, segment_ids_bt, cache)
        x_btd = x_btd + h
        y = self.post_attention_layernorm(x_btd)
        stats = None
        if self.is_moe:
            y, *stats = self.mlp.forward(y, mask_bt, routing_btk)
        else:
            y = self.mlp(y)
        return shard(x_btd + y, ACT), cache, stats


def remat_policy(cfg: ModelConfig):
    """The jax.checkpoint policy named by cfg.remat_policy (config.REMAT_POLICIES).

    "offload_dots_with_no_batch_dims" keeps the weight matmuls' outputs in pinned host memory
    (`offload_dot_with_no_batch_dims("device", "pinned_host")`): it needs a backend with a
    pinned_host memory space (TPU, GPU; jax 0.10's CPU client has one too, where it runs and gives the
    same gradients but saves nothing, host memory being device memory there). It is used as named on
    every backend, never replaced by another policy, so where XLA lacks host offloading the compile
    fails rather than silently keeping the activations on the device."""
    policies = jax.checkpoint_policies
    if cfg.remat_policy == "offload_dots_with_no_batch_dims":
        return policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    return {"nothing_saveable": policies.nothing_saveable,
            "dots_saveable": policies.dots_saveable,
            "dots_with_no_batch_dims_saveable": policies.dots_with_no_batch_dims_saveable}[cfg.remat_policy]


def _checkpointed(layer: Block, x_btd, positions_bt, cos_sin, segment_ids_bt, mask_bt, routing_btk, cfg):
    """layer(...) under jax.checkpoint, as a pure function of the layer's split state (nnx.remat
    would try to write the RouterBias variable across trace levels)."""
    graphdef, state = nnx.split(layer)

    def run(state, x_btd, positions_bt, cos_sin, segment_ids_bt, mask_bt, routing_btk):
        return nnx.merge(graphdef, state)(x_btd, positions_bt, cos_sin, segment_ids_bt, None, mask_bt, routing_btk)

    return jax.checkpoint(run, policy=remat_policy(cfg))(state, x_btd, positions_bt, cos_sin, segment_ids_bt,
                                                         mask_bt, routing_btk)


def _scan_run(block: Block, x_btd, positions_bt, cos_sin, segment_ids_bt, mask_bt, routing_lbtk, cfg):
    """The layers of one run as jax.lax.scan over the stacked block's state (cache-free forward).
    -> (x_btd, stats): stats None for a dense run, else the MoE stats with a leading layer axis
    (load [L, E], aux [L], routing [L, B, T, K], choice [L, B, T, K] or None without replay)."""
    graphdef, state = nnx.split(block)

    def body(x_btd, xs):
        layer_state, given_btk = xs
        x_btd, _, stats = nnx.merge(graphdef, layer_state)(x_btd, positions_bt, cos_sin, segment_ids_bt, None,
                                                           mask_bt, given_btk)
        if stats is not None and given_btk is None:
            stats = (*stats[:3], None, *stats[4:])  # without replay the choice is the routing: stack it once
        return x_btd, stats

    if cfg.remat:
        # prevent_cse=False: inside scan the loop already keeps XLA from merging the recomputation away
        body = jax.checkpoint(body, policy=remat_policy(cfg), prevent_cse=False)
    return jax.lax.scan(body, x_btd, (state, routing_lbtk))


class MTPModule(nnx.Module):
    """DeepSeek-V3 MTP module k: h' = W [RMSNorm(Emb(t_{i+k})); RMSNorm(h_i^{k-1})], then one block.
    The embedding and output head are shared with the main model; names follow the HF checkpoint
    (enorm, hnorm, eh_proj, shared_head.norm)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.enorm = RMSNorm(cfg.d_model, cfg)
        self.hnorm = RMSNorm(cfg.d_model, cfg)
        self.eh_proj = Linear(2 * cfg.d_model, cfg.d_model, (None, "embed"), cfg, rngs=rngs)
        self.block = Block(cfg, cfg.n_layers, rngs=rngs)  # the DeepSeek-V3 MTP block is an MoE layer
        self.norm = RMSNorm(cfg.d_model, cfg)


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        rngs = KeyStream(rngs.params())
        self.embed_tokens = Embed(cfg, rngs=rngs)
        if cfg.scan_layers:
            # the blocks are drawn in layer order from the same stream as the unrolled layout, so one
            # seed gives the same parameters in both (scanned = stack_layers(unrolled))
            for run in layer_runs(cfg):
                setattr(self, run.name, stack_modules([Block(cfg, i, rngs=rngs) for i in range(run.start, run.stop)]))
        else:
            self.layers = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg)
        self.lm_head = (None if cfg.tie_word_embeddings
                        else Linear(cfg.d_model, cfg.vocab_size, ("embed", "vocab"), cfg, rngs=rngs))
        self.mtp = nnx.List([MTPModule(cfg, rngs=rngs) for _ in range(cfg.n_mtp)])

    def blocks(self):
        """The main stack's blocks in layer order; under scan_layers each one a static slice of its
        run's stacked parameters (for the cache path, which loops)."""
        if not self.cfg.scan_layers:
            yield from self.layers
            return
        for run in layer_runs(self.cfg):
            graphdef, state = nnx.split(getattr(self, run.name))
            for j in range(run.size):
                yield nnx.merge(graphdef, jax.tree.map(lambda a, j=j: a[j], state))

    def init_cache(self, batch: int, max_len: int) -> tuple[dict, ...]:
        """One dict per layer (both layouts): GQA {k, v} [B, S, kv_heads, head_dim]; MLA {c_kv [B, S, d_c],
        k_rope [B, S, d_h^R]}. Slot = absolute position (docs/contracts.md)."""
        if not self.cfg.scan_layers:
            return tuple(layer.self_attn.init_cache(batch, max_len) for layer in self.layers)
        return tuple(getattr(self, run.name).self_attn.init_cache(batch, max_len)
                     for run in layer_runs(self.cfg) for _ in range(run.size))

    def __call__(self, tokens_bt, positions_bt, segment_ids_bt=None, cache=None, routing_btlk=None):
        """-> (hidden_btd, new_cache or None, ModelAux). routing_btlk: int32 [B, T, L_r, K] expert ids
        for the main stack's MoE layers (routing replay; None = every router selects)."""
        cfg = self.cfg
        if cache is not None and segment_ids_bt is not None:
            raise ValueError("segment_ids_bt (packing) is for the cache-free training forward; "
                             "decode rows are separate sequences")
        if cache is not None and len(cache) != cfg.n_layers:
            raise ValueError(f"cache has {len(cache)} layers, model has n_layers={cfg.n_layers}")
        n_routed = main_moe_layers(cfg)
        if routing_btlk is not None:
            want = (*tokens_bt.shape, n_routed, cfg.n_experts_per_tok)
            if n_routed == 0:
                raise ValueError("routing_btlk given, but the model has no MoE layers in its main stack")
            if not jnp.issubdtype(routing_btlk.dtype, jnp.integer):
                raise ValueError(f"routing_btlk must hold integer expert ids, got {routing_btlk.dtype}")
            if tuple(routing_btlk.shape) != want:
                raise ValueError(f"routing_btlk shape {tuple(routing_btlk.shape)} != {want} "
                                 "(batch, length, MoE layers of the main stack, n_experts_per_tok)")
        positions_bt = positions_bt.astype(jnp.int32)
        mask_bt = None if segment_ids_bt is None else segment_ids_bt != 0
        cos_sin = rope_cos_sin(positions_bt, cfg)
        x = shard(self.embed_tokens(tokens_bt), ACT)
        run_stack = self._scan_stack if cfg.scan_layers and cache is None else self._loop_stack
        x, new_cache, (loads, aux_loss, used_btlk, choice_btlk, drops) = run_stack(
            x, positions_bt, cos_sin, segment_ids_bt, cache, mask_bt, routing_btlk)
        mtp_hidden = None
        if len(self.mtp) and cache is None:
            mtp_hidden, mtp_loads, mtp_aux, mtp_drops = self._mtp(x, tokens_bt, positions_bt, cos_sin,
                                                                  segment_ids_bt, mask_bt)
            loads += [load[None] for load in mtp_loads]
            drops += [d[None] for d in mtp_drops]
            aux_loss = aux_loss + mtp_aux
        elif len(self.mtp) and cfg.is_moe:
            # decoding skips MTP; a uniform load row leaves its router bias unchanged under update_router_bias
            loads += [jnp.full((len(self.mtp), cfg.n_routed_experts), 1.0 / cfg.n_routed_experts)]
        load_le = jnp.concatenate(loads) if loads else jnp.zeros((0, cfg.n_routed_experts), jnp.float32)
        hidden = self.norm(x)
        # without replay the router's choice is what ran: one array, not two equal stacks
        choice_btlk = used_btlk if routing_btlk is None else choice_btlk
        dropped = jnp.mean(jnp.concatenate(drops)) if drops else None
        return hidden, new_cache, ModelAux(load_le, aux_loss, mtp_hidden, used_btlk, choice_btlk, dropped)

    def _loop_stack(self, x, positions_bt, cos_sin, segment_ids_bt, cache, mask_bt, routing_btlk):
        """The main stack as a Python loop over the blocks (unrolled layout, or any layout with a cache).
        -> (x, new_cache or None, ([load [1, E] per MoE layer], aux, routing_btlk, choice_btlk))."""
        cfg = self.cfg
        new_cache, loads, aux_loss = [], [], jnp.zeros((), jnp.float32)
        routing, choice, drops = [], [], []
        for i, layer in enumerate(self.blocks()):
            given_btk = None if routing_btlk is None or not layer.is_moe else routing_btlk[:, :, len(routing)]
            if cfg.remat and cache is None:
                x, layer_cache, stats = _checkpointed(layer, x, positions_bt, cos_sin, segment_ids_bt, mask_bt,
                                                      given_btk, cfg)
            else:
                x, layer_cache, stats = layer(x, positions_bt, cos_sin, segment_ids_bt,
                                              None if cache is None else cache[i], mask_bt, given_btk)
            new_cache.append(layer_cache)
            if stats is not None:
                loads.append(stats[0][None])
                aux_loss = aux_loss + stats[1]
                routing.append(stats[2])
                choice.append(stats[3])
                drops.append(stats[4][None])
        used_btlk = jnp.stack(routing, axis=2) if routing else None
        choice_btlk = jnp.stack(choice, axis=2) if choice else None
        return x, None if cache is None else tuple(new_cache), (loads, aux_loss, used_btlk, choice_btlk, drops)

    def _scan_stack(self, x, positions_bt, cos_sin, segment_ids_bt, cache, mask_bt, routing_btlk):
        """The main stack as one jax.lax.scan per run of stacked blocks (scanned layout, no cache);
        same result as _loop_stack. The MoE layers of the main stack form one run (moe_layer_freq=1),
        so routing_btlk's layer axis is that run's scan axis."""
        del cache
        loads, aux_loss, used_btlk, choice_btlk, drops = [], jnp.zeros((), jnp.float32), None, None, []
        for run in layer_runs(self.cfg):
            block = getattr(self, run.name)
            given_lbtk = None if routing_btlk is None or not block.is_moe else jnp.moveaxis(routing_btlk, 2, 0)
            x, stats = _scan_run(block, x, positions_bt, cos_sin, segment_ids_bt, mask_bt, given_lbtk, self.cfg)
            if stats is not None:
                loads.append(stats[0])
                aux_loss = aux_loss + jnp.sum(stats[1])
                used_btlk = jnp.moveaxis(stats[2], 0, 2)
                choice_btlk = None if stats[3] is None else jnp.moveaxis(stats[3], 0, 2)
                drops.append(stats[4])
        return x, None, (loads, aux_loss, used_btlk, choice_btlk, drops)

    def _mtp(self, h_btd, tokens_bt, positions_bt, cos_sin, segment_ids_bt, mask_bt):
        """Sequential MTP: module k sees h^{k-1} and the embedding of the token k steps ahead."""
        outs, loads, aux, drops = [], [], jnp.zeros((), jnp.float32), []
        for k, mod in enumerate(self.mtp, start=1):
            # t_{i+k}; the last k positions have no such token (their targets are masked by the loss)
            ahead_bt = jnp.pad(tokens_bt[:, k:], ((0, 0), (0, k)))
            e = mod.enorm(self.embed_tokens(ahead_bt))
            h_btd = mod.eh_proj(jnp.concatenate([e, mod.hnorm(h_btd)], axis=-1))
            h_btd, _, stats = mod.block(h_btd, positions_bt, cos_sin, segment_ids_bt, None, mask_bt)
            if stats is not None:
                loads.append(stats[0])
                aux = aux + stats[1]
                drops.append(stats[4])
            outs.append(mod.norm(h_btd))
        return jnp.stack(outs), loads, aux, drops

    def unembed_weight(self) -> jax.Array:
        """[d_model, vocab] in the compute dtype, tied or not."""
        w = self.embed_tokens.embedding[...].T if self.lm_head is None else self.lm_head.kernel[...]
        return w.astype(self.cfg.jnp_dtype)

    def logits(self, hidden_btd) -> jax.Array:
        """float32 logits [B, T, V]; for sampling and tests (training uses chunked log-probs)."""
        return jnp.einsum("btd,dv->btv", hidden_btd.astype(self.cfg.jnp_dtype), self.unembed_weight(),
                          preferred_element_type=jnp.float32)
