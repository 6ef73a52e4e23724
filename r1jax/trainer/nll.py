"""Next-token cross-entropy on packed rows: the objective of pretraining, SFT and distillation.

Token t is a target when its loss mask is 1 and token t-1 belongs to the same packed document (the
first token of a document has no context). The loss is the mean negative log-likelihood over all
target tokens of the *batch*: the normaliser is computed once before the micro-batch split, so
gradient accumulation gives exactly the full-batch loss.
"""

from __future__ import annotations

import jax.numpy as jnp

from r1jax.data.pipeline import SFTBatch
from r1jax.trainer.logprobs import sequence_logprobs
from r1jax.trainer.step import Objective


def target_mask(batch: SFTBatch):
    """float32 [B, L]: 1 where token t is predicted from a context in its own document."""
    seg_bl = batch.segment_ids_bl
    same_segment_bl = jnp.pad((seg_bl[:, 1:] == seg_bl[:, :-1]) & (seg_bl[:, 1:] > 0), ((0, 0), (1, 0)))
    return (same_segment_bl & (batch.loss_mask_bl > 0)).astype(jnp.float32)


def nll_loss(model, batch: SFTBatch, weights_bl, chunk: int):
    """(Σ w·(-log p), sums, aux) of one forward; `weights_bl` is the target mask over the batch's count."""
    logp_bl, _, aux = sequence_logprobs(model, batch.tokens_bl, batch.positions_bl, batch.segment_ids_bl, chunk)
    mask_bl = target_mask(batch)
    nll_sum = -jnp.sum(jnp.where(mask_bl > 0, logp_bl, 0.0))
    loss = -jnp.sum(jnp.where(mask_bl > 0, logp_bl * weights_bl, 0.0))
    return loss, {"nll_sum": nll_sum, "tokens": jnp.sum(mask_bl)}, aux


def nll_objective(chunk: int) -> Objective:
    def prepare(batch: SFTBatch):
        mask_bl = target_mask(batch)
        return batch, mask_bl / jnp.maximum(jnp.sum(mask_bl), 1.0)

    def loss(model, micro):
        batch, weights_bl = micro
        return nll_loss(model, batch, weights_bl, chunk)

    def metrics(batch, sums):
        return {"nll": sums["nll_sum"] / jnp.maximum(sums["tokens"], 1.0), "tokens": sums["tokens"]}

    return Objective(loss=loss, prepare=prepare, metrics=metrics)
