"""⑤ The GRPO update: the GRPO objective on the trainer's one jitted step.

    update = make_update_step(graphdef, grpo_cfg, optimizer, mesh, state_sharding, step_cfg)
    state, metrics = update(state, shard_batch(batch, mesh))
    check_finite(metrics, step)           # host side: raise on NaN/Inf with the step number

π_old: the batch's old_logp_bl is what the μ inner iterations use as the denominator of the ratio.
The trainer recomputes it with trainer.logprobs.make_logprob_fn (the trainer's own numerics, so r = 1
exactly at the first iteration) and passes the sampler's log-probs as sampler_logp_bl; their gap is
the metric `old_vs_sampler_abs`, the sampler/trainer mismatch of docs/grpo.md; with
GRPOConfig.is_correction the same ratio π_old/π_sampler also weights the policy-gradient term
(loss.is_weights) and the step reports is_ratio_mean / is_weight_mean / is_capped_frac / is_masked_frac.
With ratio_level="sequence" (GSPO) clip_frac_low / clip_frac_high are shares of sequences, not tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from r1jax.grpo.batch import TrainBatch, validate_batch
from r1jax.grpo.config import GRPOConfig
from r1jax.grpo.loss import effective_mask, grpo_loss, loss_weights
from r1jax.parallel.rules import DEFAULT_RULES, Rules
from r1jax.trainer.logprobs import completion_segments, row_positions, sequence_logprobs
from r1jax.trainer.state import TrainState
from r1jax.trainer.step import DEFAULT_STEP, Objective, StepConfig, make_train_step


def _masked_sums(mask_bl, logp_bl, entropy_bl, terms, mb: TrainBatch, cfg: GRPOConfig):
    s = lambda x_bl: jnp.sum(jnp.where(mask_bl > 0, x_bl, 0.0))
    sums = {
        "tokens": jnp.sum(mask_bl),
        "kl": s(terms["kl"]),
        "clip_frac_low": s(terms["clip_low"]),
        "clip_frac_high": s(terms["clip_high"]),
        "entropy": s(entropy_bl),
        "policy_vs_old_abs": s(jnp.abs(logp_bl - mb.old_logp_bl)),
    }
    if cfg.ratio_level == "sequence":
        # GSPO clips whole sequences: its clip fractions are shares of the sequences with loss tokens
        has_b = jnp.sum(mask_bl, -1) > 0
        sums["sequences"] = jnp.sum(has_b.astype(jnp.float32))
        sums["clip_frac_low"] = jnp.sum(jnp.where(has_b, terms["clip_low_b"], 0.0))
        sums["clip_frac_high"] = jnp.sum(jnp.where(has_b, terms["clip_high_b"], 0.0))
    if cfg.is_correction != "none":  # shares of loss tokens (token-weighted for the *_seq variants too)
        sums["is_ratio_mean"] = s(terms["is_ratio"])
        sums["is_weight_mean"] = s(terms["is_weight"])
        sums["is_capped_frac"] = s(terms["is_capped"])
        sums["is_masked_frac"] = s(terms["is_masked"])
    if mb.sampler_logp_bl is not None:
        sums["old_vs_sampler_abs"] = s(jnp.abs(mb.old_logp_bl - mb.sampler_logp_bl))
    return sums


def grpo_objective(cfg: GRPOConfig, chunk: int) -> Objective:
    """Eq. 1-2 over a TrainBatch; the mask and the aggregation weights come from the whole batch."""

    def prepare(batch: TrainBatch):
        if cfg.is_correction != "none" and batch.sampler_logp_bl is None:  # at trace time, before any work
            raise ValueError(f"GRPOConfig.is_correction={cfg.is_correction!r} needs TrainBatch.sampler_logp_bl "
                             "(the rollout's logp_policy_bl)")
        mask_bl = effective_mask(batch.completion_mask_bl, batch.truncated_b, cfg)
        return batch, mask_bl, loss_weights(mask_bl, cfg)  # normalised over the batch, not the micro-batch

    def loss(model, micro):
        mb, mask_bl, weights_bl = micro
        logp_bl, ent_bl, aux = sequence_logprobs(model, mb.tokens_bl, row_positions(mb.tokens_bl),
                                                 completion_segments(mb.completion_mask_bl), chunk,
                                                 mb.routing_btlk)  # None: the routers select
        value, terms = grpo_loss(logp_bl, mb.old_logp_bl, mb.ref_logp_bl, mb.advantages_b, mask_bl, cfg,
                                 weights_bl, sampler_logp_bl=mb.sampler_logp_bl)
        return value, _masked_sums(mask_bl, logp_bl, jax.lax.stop_gradient(ent_bl), terms, mb, cfg), aux

    def metrics(batch: TrainBatch, sums):
        n_tok = jnp.maximum(sums.pop("tokens"), 1.0)
        per_seq = {}
        if "sequences" in sums:
            n_seq = jnp.maximum(sums.pop("sequences"), 1.0)
            per_seq = {k: sums.pop(k) / n_seq for k in ("clip_frac_low", "clip_frac_high")}
        adv_ng = batch.advantages_b.reshape(-1, cfg.group_size)
        return {
            "tokens": jnp.sum(effective_mask(batch.completion_mask_bl, batch.truncated_b, cfg)),
            **{k: v / n_tok for k, v in sums.items()},
            **per_seq,
            "adv_mean": jnp.mean(batch.advantages_b),
            "adv_std": jnp.std(batch.advantages_b),
            "zero_var_group_frac": jnp.mean(jnp.all(adv_ng == 0, axis=-1).astype(jnp.float32)),
        }

    return Objective(loss=loss, prepare=prepare, metrics=metrics)


def make_update_step(graphdef, cfg: GRPOConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                     state_sharding: TrainState, step_cfg: StepConfig = DEFAULT_STEP,
                     rules: Rules = DEFAULT_RULES):
    """The jitted GRPO update (the state is donated; see trainer.step.make_train_step)."""
    train_step = make_train_step(graphdef, grpo_objective(cfg, step_cfg.logprob_chunk), optimizer, mesh,
                                 state_sharding, step_cfg, rules)

    def run(state: TrainState, batch: TrainBatch):
        validate_batch(batch, cfg.group_size, step_cfg.micro_batches,  # before the compiled code
                       require_sampler_logp=cfg.is_correction != "none")
        return train_step(state, batch)

    run.jitted = train_step.jitted
    return run
