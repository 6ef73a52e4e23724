"""Stage: supervised fine-tuning — R1's cold start (§2.3.1), SFT on rejection-sampled data (§2.3.3),
distillation of a student on a teacher's outputs (§2.4).

  SFT file (JSONL/Parquet; prompt/response or chat messages) ─▶ template + loss on response tokens
  ─▶ first-fit packing ─▶ the shared supervised loop ─▶ held-out loss + task eval ─▶ checkpoints

Reads config sections seed, mesh, model, policy (any source), trainer, optim, data (the SFT file),
sft, eval, eval_task (a problem set for the paper's pass@1; task="" = none), rollout (generation
during that eval) and reward. The workdir is a policy source for the next stage. Started again on
the same workdir it resumes mid-epoch at the identical next batch.
"""

from __future__ import annotations

import dataclasses

from r1jax import console
from r1jax.data.pipeline import SFTPipelineConfig, make_sft_dataset
from r1jax.data.readers import FieldMap, SFTFieldMap, read_sft_file, train_and_heldout
from r1jax.data.sources import TaskSpec, load_splits
from r1jax.parallel.mesh import MeshConfig
from r1jax.trainer import config as C
from r1jax.trainer.evaluation import EvalSpec, Evaluator
from r1jax.trainer.generation import Generator, RolloutSpec
from r1jax.trainer.nll import nll_objective
from r1jax.trainer.optimizer import make_optimizer
from r1jax.trainer.policy import load_policy
from r1jax.trainer.rewards import Scorer
from r1jax.trainer.session import Session
from r1jax.trainer.step import StepConfig, make_train_step
from r1jax.trainer.supervised import FitSpec, fit, heldout_metrics, make_loss_fn

CONFIG_SECTIONS = {"data": SFTPipelineConfig, "data.fields": SFTFieldMap, "eval_task": TaskSpec,
                   "eval_task.fields": FieldMap}
FIELD_DOCS = {
    "data.path": "the SFT file: JSONL (.jsonl, .jsonl.gz) or Parquet",
    "data.eval_path": "a held-out SFT file for the loss ('' = hold out data.n_heldout rows of data.path)",
    "data.n_heldout": "rows held out from the end of data.path for the held-out loss (0 = none)",
    "data.on_error": "a bad row: 'fail' (an error naming file, row and field) or 'skip' (counted)",
    "sft.epochs": "passes over the SFT data",
    "sft.steps": "optimizer steps (0 = as many as sft.epochs take, counted before training)",
    "eval_task.task": "a problem set for the paper's pass@1 during SFT ('' = held-out loss only)",
}


@dataclasses.dataclass(frozen=True)
class SFTSpec:
    seed: int
    mesh: MeshConfig
    model: C.ModelSpec
    policy: C.PolicySpec
    step: StepConfig
    optim_fields: dict
    path: str
    eval_path: str
    n_heldout: int
    """Examples held out from the end of `path` for the loss when no eval_path is given (0 = none)."""
    fields: SFTFieldMap
    on_error: str
    pipeline: SFTPipelineConfig
    epochs: int
    steps: int
    """0 = as many as `epochs` passes over the data take (counted before training)."""
    checkpoint_every: int
    checkpoint_keep: int
    eval: EvalSpec
    eval_task: TaskSpec | None
    rollout: RolloutSpec
    reward: C.RewardSpec | None


def build(c) -> SFTSpec:
    d, s = c.data, c.sft
    C.require(bool(d.path), "data.path", "needs the SFT file (JSONL or Parquet)")
    C.require(d.on_error in ("fail", "skip"), "data.on_error", f"must be 'fail' or 'skip', got {d.on_error!r}")
    C.require(s.epochs >= 1, "sft.epochs", f"must be >= 1, got {s.epochs}")
    C.require(s.steps >= 0, "sft.steps", f"must be >= 0 (0 = epochs' worth), got {s.steps}")
    C.require(d.n_heldout >= 0, "data.n_heldout", f"must be >= 0, got {d.n_heldout}")
    C.optim_config(c, 1)  # checks the section now; the schedule length is known once the data is counted
    task = C.task_spec(c, int(c.seed), "eval_task") if c.eval_task.task else None
    spec = SFTSpec(
        seed=int(c.seed), mesh=C.mesh_config(c), model=C.model_spec(c), policy=C.policy_spec(c),
        step=C.step_config(c), optim_fields=C.section(c, "optim"), path=d.path, eval_path=d.eval_path,
        n_heldout=d.n_heldout,
        fields=C.build(SFTFieldMap, "data.fields", **{**C.section(d, "fields"), "keep": tuple(d.fields.keep)}),
        on_error=d.on_error,
        pipeline=C.build(SFTPipelineConfig, "data", batch_size=d.batch_size, seq_len=d.seq_len,
                         template=C.template(c), seed=int(c.seed), num_epochs=s.epochs, pack=d.pack,
                         truncation=d.truncation),
        epochs=s.epochs, steps=s.steps, checkpoint_every=c.checkpoint.every, checkpoint_keep=c.checkpoint.keep,
        eval=C.eval_spec(c),
        eval_task=task,
        rollout=C.rollout_spec(c),
        reward=C.reward_spec(c) if task else None,
    )
    C.check_rows(spec.mesh, spec.pipeline.batch_size, spec.step.micro_batches, None, "data.batch_size",
                 "rows per batch")
    return spec


def run(spec: SFTSpec, workdir: str, client=None) -> dict:
    with Session(workdir, spec.mesh, keep=spec.checkpoint_keep) as session:
        # ── the SFT examples: train, and held out for the loss ──────────────────────────────────
        examples, heldout_examples = train_and_heldout(
            lambda path: read_sft_file(path, spec.fields, spec.on_error)[0], spec.path, spec.eval_path, spec.n_heldout)

        # ── the policy; every data set is tokenised and checked before the train state exists ────
        policy = load_policy(spec.policy, spec.model, session.mesh)
        tokenizer = policy.tokenizer
        steps = spec.steps or sum(1 for _ in make_sft_dataset(examples, tokenizer, spec.pipeline)[0])
        console.say("data", f"{spec.path}: {len(examples):,} examples ({len(heldout_examples)} held out), "
                            f"template {spec.pipeline.template}, {steps} steps = {spec.epochs} epoch(s)")
        held = list(make_sft_dataset(heldout_examples, tokenizer, dataclasses.replace(
            spec.pipeline, shuffle=False, num_epochs=1))[0]) if heldout_examples else []
        task_eval = None
        if spec.eval_task is not None:  # the paper's evaluation on a problem set
            _, problems, _ = load_splits(spec.eval_task)
            generate = Generator(policy.graphdef, session.mesh, tokenizer, spec.rollout, policy.model_cfg)
            task_eval = Evaluator(generate, Scorer(client, spec.pipeline.template, dict(spec.reward.weights)),
                                  problems, spec.pipeline.template, spec.eval, spec.seed)

        # ── train state, resumed mid-epoch at the identical next batch ──────────────────────────
        optimizer = make_optimizer(C.optim_from(spec.optim_fields, steps), policy.params)
        state = session.init_state(policy, optimizer, spec.seed, stage="sft", template=spec.pipeline.template)
        state, _, data_state = session.resume(state)
        batches = iter(make_sft_dataset(examples, tokenizer, spec.pipeline)[0])
        if data_state:
            batches.set_state(data_state["batches"])
        objective = nll_objective(spec.step.logprob_chunk)
        loss_fn = make_loss_fn(policy.graphdef, objective, session.mesh, session.shardings)

        def evaluate(st, step: int) -> dict:
            scalars = heldout_metrics(loss_fn, st.params, st.model_state, held, session.mesh) if held else {}
            if task_eval is not None:
                result = task_eval(st.params, st.model_state, step)
                session.log_samples(step, [{"eval": True, **s} for s in result.samples])
                scalars.update(result.scalars())
            return scalars

        # ── the shared supervised loop ──────────────────────────────────────────────────────────
        step_fn = make_train_step(policy.graphdef, objective, optimizer, session.mesh, session.shardings, spec.step)
        fit(session, state, step_fn, batches, FitSpec(steps=steps, checkpoint_every=spec.checkpoint_every,
                                                      eval_every=spec.eval.every, desc="SFT"),
            evaluate=evaluate if held or task_eval else None)
    return {"steps": steps}
