"""The SFT / pretraining step: next-token cross-entropy on the masked tokens of packed rows.

Used to pretrain the tiny base model of the CPU run (loss on every token of free text) and for
supervised fine-tuning (loss on response tokens only; R1 cold start, rejection-sampled SFT,
distillation). Same shape as the GRPO step: a pure (TrainState, batch) -> (TrainState, metrics),
jitted once with explicit shardings and the state donated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.grpo.logprobs import token_logprobs
from r1jax.grpo.state import TrainState, batch_sharding


@struct.dataclass
class SFTBatch:
    tokens_bl: jax.Array  # int32 [B, L]
    loss_mask_bl: jax.Array  # int32/float32 [B, L]: 1 where token t is a training target
    segment_ids_bl: jax.Array  # int32 [B, L]: packed documents 1, 2, ...; 0 = padding
    positions_bl: jax.Array  # int32 [B, L]: restart at 0 in every segment


def sft_loss(graphdef, params, model_state, batch: SFTBatch, chunk: int):
    """Mean negative log-likelihood over target tokens. Token t is a target when its mask is 1 and
    token t-1 belongs to the same segment (the first token of a document has no context)."""
    model = nnx.merge(graphdef, params, model_state)
    hidden_bld, _, aux = model(batch.tokens_bl, batch.positions_bl, segment_ids_bt=batch.segment_ids_bl)
    next_bl = jnp.roll(batch.tokens_bl, -1, axis=1)
    logp_next_bl = token_logprobs(hidden_bld, model.unembed_weight(), next_bl, chunk)
    seg = batch.segment_ids_bl
    same_segment = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    mask_next_bl = jnp.pad(same_segment & (batch.loss_mask_bl[:, 1:] > 0), ((0, 0), (0, 1)))
    mask_next_bl = mask_next_bl.astype(jnp.float32)
    n_tokens = jnp.maximum(jnp.sum(mask_next_bl), 1.0)
    loss = -jnp.sum(logp_next_bl * mask_next_bl) / n_tokens
    return loss + aux.aux_loss, {"nll": loss, "tokens": jnp.sum(mask_next_bl)}


def make_sft_step(graphdef, optimizer: optax.GradientTransformation, mesh: Mesh, state_sharding,
                  chunk: int = 128):
    """(TrainState, SFTBatch) -> (TrainState, metrics), jitted once; the state is donated."""

    def step(state: TrainState, batch: SFTBatch):
        grad_fn = jax.value_and_grad(sft_loss, argnums=1, has_aux=True)
        (loss, metrics), grads = grad_fn(graphdef, state.params, state.model_state, batch, chunk)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    data = batch_sharding(mesh)
    jitted = jax.jit(step, in_shardings=(state_sharding, SFTBatch(data, data, data, data)),
                     out_shardings=(state_sharding, NamedSharding(mesh, P())), donate_argnums=0)

    def run(state: TrainState, batch: SFTBatch):
        with jax.set_mesh(mesh):  # lets the model's activation constraints (rules.shard) apply
            return jitted(state, batch)

    return run
