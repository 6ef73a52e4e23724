"""The one jitted train step every stage uses: a pure (TrainState, batch) -> (TrainState, metrics).

    step = make_train_step(graphdef, objective, optimizer, mesh, state_sharding, StepConfig(...))
    state, metrics = step(state, shard_batch(batch, mesh))
    check_finite(metrics, step_number)        # host side: raise on NaN/Inf with the step number

A stage says only *what* it trains, as an `Objective`: the loss of one micro-batch (SFT's
cross-entropy, GRPO's clipped ratio), what is computed once on the whole batch before it is split
(normalisers, so accumulation over micro-batches sums to exactly the full-batch loss), and its
metrics. The step does the rest, once for all stages: gradient accumulation over micro-batches in
float32 accumulators sharded like the parameters, the MoE balance loss and aux-loss-free router-bias
update, the optimizer, a non-finite guard (the state is left unchanged and metrics say so), and
donation of the state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.model import update_router_bias
from r1jax.parallel.rules import DEFAULT_RULES, Rules
from r1jax.trainer.state import TrainState, batch_sharding


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """How the step runs, whatever the objective."""

    micro_batches: int = 1
    """Gradient accumulation: the batch is split into this many micro-batches inside the jitted step."""
    logprob_chunk: int = 128
    """Sequence positions per chunk of the log-prob pass; only [B, chunk, V] logits exist at once."""
    router_bias_rate: float = 1e-3
    """γ: step size of the MoE aux-loss-free router-bias update (DeepSeek-V3); 0 = off. The optional
    sequence-wise balance loss enters every loss with its α from ModelConfig.seq_aux_alpha."""

    def __post_init__(self):
        for name in ("micro_batches", "logprob_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"StepConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.router_bias_rate < 0:
            raise ValueError(f"StepConfig.router_bias_rate must be >= 0, got {self.router_bias_rate}")


DEFAULT_STEP = StepConfig()


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a stage trains.

    loss(model, micro) -> (loss, sums, aux): the loss of one micro-batch (an nnx module and a slice of
      `prepare`'s output), a dict of scalar sums to accumulate for the metrics, and the forward's
      ModelAux (its balance loss is added here, averaged over micro-batches; its expert load drives
      the router-bias update).
    prepare(batch) -> micro-able pytree of [B, ...] arrays: computed once on the whole batch inside
      the step; everything normalised over the batch belongs here.
    metrics(batch, sums) -> dict of scalars from the accumulated sums.
    """

    loss: Callable
    prepare: Callable = lambda batch: batch
    metrics: Callable = lambda batch, sums: sums


def _split_micro(x, m: int):
    """[B, ...] -> [m, B/m, ...] taking rows m apart, so each micro-batch keeps the batch sharding
    (a contiguous split would put whole micro-batches on a few devices)."""
    return x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)


def make_train_step(graphdef, objective: Objective, optimizer: optax.GradientTransformation, mesh: Mesh,
                    state_sharding: TrainState, cfg: StepConfig | None = None, rules: Rules = DEFAULT_RULES):
    """The jitted step; `state_sharding` is trainer.state.train_state_shardings(...). The state is
    donated; on a non-finite loss or gradient norm the returned state is the input state unchanged
    (metrics["skipped_nonfinite"] = 1), so the last good state can still be saved."""
    cfg = cfg or DEFAULT_STEP
    m = cfg.micro_batches

    def micro_loss(params, model_state, micro):
        model = nnx.merge(graphdef, params, model_state)
        loss, sums, aux = objective.loss(model, micro)
        # the balance loss is a per-forward mean: average it over the micro-batches
        sums = {**sums, "aux_loss": aux.aux_loss / m}
        if aux.dropped_frac is not None:  # capacity-bounded expert dispatch (model.moe_dispatch=all_to_all)
            sums["moe_dropped_frac"] = aux.dropped_frac / m
        return loss + aux.aux_loss / m, (sums, aux.expert_load_le / m)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch):
        micro = jax.tree.map(lambda x: _split_micro(x, m), objective.prepare(batch))
        # float32 gradient accumulators, sharded like the parameters (FSDP must not gather them)
        zeros = jax.tree.map(
            lambda sh, sub: jax.tree.map(
                lambda p: jax.lax.with_sharding_constraint(jnp.zeros(p.shape, jnp.float32), sh), sub),
            state_sharding.params, state.params,
        )

        def body(carry, mb):
            g_acc, loss_acc, sums_acc, load_acc = carry
            (loss, (sums, load)), g = grad_fn(state.params, state.model_state, mb)
            g_acc = jax.tree.map(lambda a, x: a + x.astype(jnp.float32), g_acc, g)
            sums_acc = jax.tree.map(jnp.add, sums_acc, sums)
            return (g_acc, loss_acc + loss, sums_acc, load_acc + load), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(lambda: grad_fn(state.params, state.model_state, first)[0][1])
        sums0, load0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        init = (zeros, jnp.zeros((), jnp.float32), sums0, load0)
        (grads, loss, sums, load_le), _ = jax.lax.scan(body, init, micro)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = state.model_state
        if load_le.shape[0] and cfg.router_bias_rate:
            model_state = update_router_bias(model_state, load_le, cfg.router_bias_rate)
        new = TrainState(params=params, model_state=model_state, opt_state=opt_state, step=state.step + 1,
                         rng=state.rng)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)

        aux_loss = sums.pop("aux_loss")
        dropped = {"moe_dropped_frac": sums.pop("moe_dropped_frac")} if "moe_dropped_frac" in sums else {}
        metrics = {"loss": loss, "grad_norm": grad_norm, "aux_loss": aux_loss, **dropped,
                   "skipped_nonfinite": 1.0 - finite.astype(jnp.float32), **objective.metrics(batch, sums)}
        if load_le.shape[0]:
            metrics["expert_load_max"] = jnp.max(load_le) * load_le.shape[1]  # 1 = perfectly balanced
        return new, metrics

    jitted = jax.jit(step, in_shardings=(state_sharding, batch_sharding(mesh, rules)),
                     out_shardings=(state_sharding, NamedSharding(mesh, P())), donate_argnums=0)

    def run(state: TrainState, batch):
        for x in jax.tree.leaves(batch):
            if x.shape[0] % m:
                raise ValueError(f"train step: batch of {x.shape[0]} rows is not divisible by "
                                 f"micro_batches={m}")
        with jax.set_mesh(mesh):  # lets the model's activation constraints (rules.shard) apply
            return jitted(state, batch)

    run.jitted = jitted
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
