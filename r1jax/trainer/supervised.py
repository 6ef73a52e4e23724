"""The supervised loop that pretraining, SFT and distillation share: packed batches from a
checkpointable grain iterator -> the shared train step -> metrics, held-out loss, eval, checkpoints.

    state = fit(session, state, train_step, batches, FitSpec(steps=..., ...), eval_fn=..., loss_fn=...)

The iterator's position is saved with every checkpoint, so a run killed mid-epoch resumes at the
identical next batch (bit-identical parameters to a run that was never killed).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax import console
from r1jax.trainer.session import Session
from r1jax.trainer.state import TrainState, batch_sharding, shard_batch
from r1jax.trainer.step import Objective, check_finite

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FitSpec:
    steps: int
    """Optimizer steps in all (the schedule's length)."""
    checkpoint_every: int = 100
    eval_every: int = 0
    """Held-out loss and eval_fn every this many steps (and at the last); 0 = only at the last."""
    desc: str = "train"


def make_loss_fn(graphdef, objective: Objective, mesh, state_sharding):
    """Jitted (params, model_state, batch) -> metrics of `objective` without a gradient: held-out loss."""

    def evaluate(params, model_state, batch):
        model = nnx.merge(graphdef, params, model_state)
        loss, sums, _ = objective.loss(model, objective.prepare(batch))
        return {"loss": loss, **objective.metrics(batch, sums)}

    jitted = jax.jit(evaluate, in_shardings=(state_sharding.params, state_sharding.model_state,
                                             batch_sharding(mesh)), out_shardings=NamedSharding(mesh, P()))

    def run(params, model_state, batch):
        with jax.set_mesh(mesh):
            return jitted(params, model_state, batch)

    return run


def heldout_metrics(loss_fn, params, model_state, batches, mesh, weight: str = "tokens") -> dict:
    """Mean of the objective's metrics over a finite list of held-out batches, each batch weighted by
    its metric `weight` (target tokens for next-token loss, pairs for a reward model)."""
    total, count = {}, 0.0
    for batch in batches:
        m = jax.device_get(loss_fn(params, model_state, shard_batch(batch, mesh)))
        n = float(m[weight])
        for k, v in m.items():
            if k != weight:
                total[k] = total.get(k, 0.0) + float(v) * n
        count += n
    return {f"heldout/{k}": v / max(count, 1.0) for k, v in total.items()} | {f"heldout/{weight}": count}


def fit(session: Session, state: TrainState, train_step, batches, spec: FitSpec, *,
        evaluate: Callable[[TrainState, int], dict] | None = None) -> TrainState:
    """Runs steps session.start_step .. spec.steps. `batches` is a grain iterator already set to the
    resumed position; it must not run dry before spec.steps. `evaluate(state, step)` returns scalars
    (held-out loss, pass@1) logged with the step: at step 0, every eval_every steps and at the last."""
    start = session.start_step
    if start == 0 and evaluate is not None:
        session.log(0, evaluate(state, 0))
    bar = console.progress(range(start, spec.steps), spec.desc, initial=start, total=spec.steps, mininterval=2)
    t_last, tokens = time.perf_counter(), 0.0
    for step in bar:
        try:
            batch = next(batches)
        except StopIteration:
            raise RuntimeError(f"{spec.desc}: the data ran out at step {step} of {spec.steps}") from None
        tokens += float(np.sum(batch.loss_mask_bl))
        state, metrics = train_step(state, shard_batch(batch, session.mesh))
        done = step + 1
        last = done == spec.steps
        log_now = done % 10 == 0 or last or (spec.eval_every and done % spec.eval_every == 0)
        if log_now:
            metrics = jax.device_get(metrics)
            check_finite(metrics, done)
            now = time.perf_counter()
            scalars = {**{f"train/{k}": float(v) for k, v in metrics.items()},
                       "throughput/target_tokens_per_s": tokens / max(now - t_last, 1e-9)}
            t_last, tokens = now, 0.0
            if evaluate is not None and (last or (spec.eval_every and done % spec.eval_every == 0)):
                scalars.update(evaluate(state, done))
            session.log(done, scalars)
            bar.set_postfix(loss=f"{scalars['train/loss']:.3f}")
        if done % spec.checkpoint_every == 0 or last:
            session.save(done, state, data_state={"batches": batches.get_state()}, force=last)
    return state
