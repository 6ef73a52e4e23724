"""⑤ The GRPO update step: a pure (TrainState, TrainBatch) -> (TrainState, metrics), jitted once.

    update = make_update_step(graphdef, grpo_cfg, optimizer, mesh, state_sharding)
    state, metrics = update(state, shard_batch(batch, mesh))
    check_finite(metrics, step)           # host side: raise on NaN/Inf with the step number

π_old: the batch's old_logp_bl is what the μ inner iterations use as the denominator of the ratio.
The trainer recomputes it with make_logprob_fn (the trainer's own numerics, so r = 1 exactly at the
first iteration) and passes the sampler's log-probs as sampler_logp_bl; their gap is the metric
`old_vs_sampler_abs`, the sampler/trainer mismatch of docs/grpo.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.grpo.config import GRPOConfig
from r1jax.grpo.logprobs import shift_to_sequence, token_logprobs_and_entropy
from r1jax.grpo.loss import effective_mask, grpo_loss, loss_weights
from r1jax.grpo.state import TrainBatch, TrainState, batch_sharding, validate_batch
from r1jax.model import update_router_bias
from r1jax.parallel.rules import DEFAULT_RULES, Rules


def _segment_ids(completion_mask_bl):
    """1 up to the end of the completion, 0 on the trailing pad, so MoE load statistics and the
    balance loss ignore padding. Rows with an empty completion are all 1 (they carry no loss)."""
    length = completion_mask_bl.shape[1]
    pos_l = jnp.arange(length)
    end_b = jnp.max(jnp.where(completion_mask_bl > 0, pos_l + 1, 0), axis=-1)
    end_b = jnp.where(end_b == 0, length, end_b)
    return (pos_l[None, :] < end_b[:, None]).astype(jnp.int32)


def sequence_logprobs(graphdef, params, model_state, tokens_bl, segment_ids_bl, chunk: int):
    """(logp_bl, entropy_bl, aux): entry t = log p(token t | tokens < t) (0 at t = 0) and the entropy
    of the distribution token t was drawn from, by the chunked pass over the final hidden states."""
    model = nnx.merge(graphdef, params, model_state)
    positions_bl = jnp.broadcast_to(jnp.arange(tokens_bl.shape[1], dtype=jnp.int32), tokens_bl.shape)
    hidden_bld, _, aux = model(tokens_bl, positions_bl, segment_ids_bt=segment_ids_bl)
    # hidden at t-1 predicts token t: score targets tokens[1:] and shift back to the batch convention
    next_bl = jnp.roll(tokens_bl, -1, axis=1)
    logp, ent = token_logprobs_and_entropy(hidden_bld, model.unembed_weight(), next_bl, chunk)
    return shift_to_sequence(logp), shift_to_sequence(ent), aux


def _masked_sums(mask_bl, logp_bl, entropy_bl, terms, mb: TrainBatch):
    s = lambda x_bl: jnp.sum(jnp.where(mask_bl > 0, x_bl, 0.0))
    sums = {
        "tokens": jnp.sum(mask_bl),
        "kl": s(terms["kl"]),
        "clip_frac_low": s(terms["clip_low"]),
        "clip_frac_high": s(terms["clip_high"]),
        "entropy": s(entropy_bl),
        "policy_vs_old_abs": s(jnp.abs(logp_bl - mb.old_logp_bl)),
    }
    if mb.sampler_logp_bl is not None:
        sums["old_vs_sampler_abs"] = s(jnp.abs(mb.old_logp_bl - mb.sampler_logp_bl))
    return sums


def _split_micro(x, m: int):
    """[B, ...] -> [m, B/m, ...] taking rows m apart, so each micro-batch keeps the batch sharding
    (a contiguous split would put whole micro-batches on a few devices)."""
    return x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)


def make_update_step(
    graphdef, cfg: GRPOConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
    state_sharding: TrainState, rules: Rules = DEFAULT_RULES,
):
    """The jitted update. `state_sharding` is grpo.state.train_state_shardings(...). The state is
    donated; on a non-finite loss or gradient norm the returned state is the input state unchanged
    (and metrics say so), so the last good state can still be saved."""
    m = cfg.micro_batches

    def micro_loss(params, model_state, mb: TrainBatch, mask_bl, weights_bl):
        seg_bl = _segment_ids(mb.completion_mask_bl)
        logp_bl, ent_bl, aux = sequence_logprobs(graphdef, params, model_state, mb.tokens_bl, seg_bl,
                                                 cfg.logprob_chunk)
        loss, terms = grpo_loss(logp_bl, mb.old_logp_bl, mb.ref_logp_bl, mb.advantages_b, mask_bl, cfg,
                                weights_bl)
        # the balance loss is a per-forward mean: average it over the micro-batches
        loss = loss + aux.aux_loss / m
        sums = _masked_sums(mask_bl, logp_bl, jax.lax.stop_gradient(ent_bl), terms, mb)
        sums["aux_loss"] = aux.aux_loss / m
        return loss, (sums, aux.expert_load_le / m)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def update(state: TrainState, batch: TrainBatch):
        mask_bl = effective_mask(batch.completion_mask_bl, batch.truncated_b, cfg)
        weights_bl = loss_weights(mask_bl, cfg)  # normalised over the whole batch, not per micro-batch
        micro = jax.tree.map(lambda x: _split_micro(x, m), (batch, mask_bl, weights_bl))
        # float32 gradient accumulators, sharded like the parameters (FSDP must not gather them)
        zeros = jax.tree.map(
            lambda sh, sub: jax.tree.map(
                lambda p: jax.lax.with_sharding_constraint(jnp.zeros(p.shape, jnp.float32), sh), sub),
            state_sharding.params, state.params,
        )

        def body(carry, xs):
            g_acc, loss_acc, sums_acc, load_acc = carry
            mb, mb_mask, mb_w = xs
            (loss, (sums, load)), g = grad_fn(state.params, state.model_state, mb, mb_mask, mb_w)
            g_acc = jax.tree.map(lambda a, x: a + x.astype(jnp.float32), g_acc, g)
            sums_acc = jax.tree.map(jnp.add, sums_acc, sums)
            return (g_acc, loss_acc + loss, sums_acc, load_acc + load), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(lambda: grad_fn(state.params, state.model_state, *first)[0][1])
        sums0, load0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        init = (zeros, jnp.zeros((), jnp.float32), sums0, load0)
        (grads, loss, sums, load_le), _ = jax.lax.scan(body, init, micro)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

        grad_norm = jnp.sqrt(sum(
            jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = state.model_state
        if load_le.shape[0] and cfg.router_bias_rate:
            model_state = update_router_bias(model_state, load_le, cfg.router_bias_rate)
        new = TrainState(params=params, model_state=model_state, opt_state=opt_state,
                         step=state.step + 1, rng=state.rng)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)

        n_tok = jnp.maximum(sums.pop("tokens"), 1.0)
        adv_ng = batch.advantages_b.reshape(-1, cfg.group_size)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "tokens": jnp.sum(mask_bl),
            "aux_loss": sums.pop("aux_loss"),
            **{k: v / n_tok for k, v in sums.items()},
            "adv_mean": jnp.mean(batch.advantages_b),
            "adv_std": jnp.std(batch.advantages_b),
            "zero_var_group_frac": jnp.mean(jnp.all(adv_ng == 0, axis=-1).astype(jnp.float32)),
            "skipped_nonfinite": 1.0 - finite.astype(jnp.float32),
        }
        if load_le.shape[0]:
            metrics["expert_load_max"] = jnp.max(load_le) * load_le.shape[1]  # 1 = perfectly balanced
        return new, metrics

    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(
        update,
        in_shardings=(state_sharding, batch_sharding(mesh, rules)),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )

    def run(state: TrainState, batch: TrainBatch):
        validate_batch(batch, cfg.group_size, cfg.micro_batches)  # shapes/dtypes, before the compiled code
        with jax.set_mesh(mesh):  # lets the model's activation constraints (rules.shard) apply
            return jitted(state, batch)

    run.jitted = jitted
    return run


def make_logprob_fn(graphdef, mesh: Mesh, chunk: int = 128, params_sharding=None, model_state_sharding=None,
                    rules: Rules = DEFAULT_RULES):
    """Jitted (params, model_state, tokens_bl, completion_mask_bl) -> logp_bl, zero outside the
    completion: the π_ref log-probs (frozen reference weights) and the recomputed π_old log-probs."""

    def logprobs(params, model_state, tokens_bl, completion_mask_bl):
        seg_bl = _segment_ids(completion_mask_bl)
        logp_bl, _, _ = sequence_logprobs(graphdef, params, model_state, tokens_bl, seg_bl, chunk)
        return jnp.where(completion_mask_bl > 0, logp_bl, 0.0)

    bsh = batch_sharding(mesh, rules)
    jitted = jax.jit(logprobs, in_shardings=(params_sharding, model_state_sharding, bsh, bsh),
                     out_shardings=bsh)

    def run(params, model_state, tokens_bl, completion_mask_bl):
        with jax.set_mesh(mesh):
            return jitted(params, model_state, tokens_bl, completion_mask_bl)

    return run


def check_finite(metrics: dict, step: int) -> None:
    """Host-side guardrail: raise FloatingPointError naming the step and the quantity."""
    for name in ("loss", "grad_norm"):
        value = float(np.asarray(metrics[name]))
        if not np.isfinite(value):
            raise FloatingPointError(f"step {step}: {name} is {value}; the update was not applied")


def step_key(state: TrainState, step: int | None = None) -> jax.Array:
    """The typed PRNG key of a step: fold_in(base key, step) (sampling uses it; resumes continue it)."""
    base = jax.random.wrap_key_data(state.rng)
    return jax.random.fold_in(base, state.step if step is None else step)
