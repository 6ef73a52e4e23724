"""Stage: reward models — a Bradley–Terry reward model on preference pairs (DeepSeek-R1 §2.3.4: the
helpfulness and harmlessness reward models of the general-data RL).

  preference file (JSONL/Parquet; prompt/chosen/rejected text or chat messages) ─▶ template + view
  (helpful: the summary only; harmless: the whole response) ─▶ decoder of any policy source + a
  scalar head ─▶ -log σ(r_chosen - r_rejected) through the shared supervised loop ─▶ held-out pair
  accuracy ─▶ checkpoints

Reads config sections seed, mesh, model, policy (any source; usually a previous stage's workdir, so
the tokenizer is the policy's), trainer, optim, data (the preference file), rm and checkpoint. The
workdir is a reward-model source (`r1jax.trainer.reward_model.RewardModel.load`), with
reward_model.json recording the view, template and lengths. Started again on the same workdir it
resumes at the identical next batch.
"""

from __future__ import annotations

import dataclasses

from r1jax import console
from r1jax.data.preferences import PreferenceFieldMap, read_preference_file
from r1jax.data.readers import train_and_heldout
from r1jax.parallel.mesh import MeshConfig
from r1jax.trainer import config as C
from r1jax.trainer.optimizer import make_optimizer
from r1jax.trainer.policy import load_policy
from r1jax.trainer.reward_model import (
    VIEWS,
    PairPipelineConfig,
    bradley_terry_objective,
    encode_pairs,
    make_pair_dataset,
    reward_policy,
    write_reward_record,
)
from r1jax.trainer.session import Session
from r1jax.trainer.step import StepConfig, make_train_step
from r1jax.trainer.supervised import FitSpec, fit, heldout_metrics, make_loss_fn


@dataclasses.dataclass(frozen=True)
class RMConfig:
    """The `rm` section."""

    view: str = "summary"
    """What of a response the model reads: "summary" (helpfulness; after the second marker) or "response" (all)."""
    epochs: int = 1
    """Passes over the training pairs (when rm.steps is 0)."""
    steps: int = 0
    """Optimizer steps (0 = as many as rm.epochs take; else the pairs repeat, reshuffled, as long as needed)."""
    head_init_std: float = 0.0
    """Init std of the scalar head (0 = zeros: every pair starts tied, loss log 2)."""
    eval_every: int = 25
    """Held-out pair accuracy every this many steps (and at step 0 and the last); 0 = only there."""


CONFIG_SECTIONS = {"data": PairPipelineConfig, "data.fields": PreferenceFieldMap, "rm": RMConfig}
FIELD_DOCS = {
    "data.path": "the preference file: JSONL (.jsonl, .jsonl.gz) or Parquet",
    "data.eval_path": "a held-out preference file ('' = hold out data.n_heldout pairs of data.path)",
    "data.n_heldout": "pairs held out from the end of data.path for held-out accuracy (0 = none)",
    "data.on_error": "a bad row: 'fail' (an error naming file, row and field) or 'skip' (counted)",
    "data.template": "prompt template the reward model reads the question in (recorded; the scorer uses it)",
    "data.batch_size": "preference pairs per step (each is a chosen and a rejected row)",
}


@dataclasses.dataclass(frozen=True)
class RMSpec:
    seed: int
    mesh: MeshConfig
    model: C.ModelSpec
    policy: C.PolicySpec
    step: StepConfig
    optim_fields: dict
    path: str
    eval_path: str
    n_heldout: int
    fields: PreferenceFieldMap
    on_error: str
    pipeline: PairPipelineConfig
    rm: RMConfig
    checkpoint_every: int
    checkpoint_keep: int


def build(c) -> RMSpec:
    d = c.data
    C.require(bool(d.path), "data.path", "needs the preference file (JSONL or Parquet)")
    C.require(d.on_error in ("fail", "skip"), "data.on_error", f"must be 'fail' or 'skip', got {d.on_error!r}")
    C.require(d.n_heldout >= 0, "data.n_heldout", f"must be >= 0, got {d.n_heldout}")
    rm = C.build(RMConfig, "rm", **C.section(c, "rm"))
    C.require(rm.view in VIEWS, "rm.view", f"must be one of {VIEWS}, got {rm.view!r}")
    C.require(rm.epochs >= 1, "rm.epochs", f"must be >= 1, got {rm.epochs}")
    C.require(rm.steps >= 0, "rm.steps", f"must be >= 0 (0 = epochs' worth), got {rm.steps}")
    C.require(rm.eval_every >= 0, "rm.eval_every", f"must be >= 0, got {rm.eval_every}")
    C.require(rm.head_init_std >= 0, "rm.head_init_std", f"must be >= 0, got {rm.head_init_std}")
    C.optim_config(c, 1)  # checks the section now; the schedule length is known once the data is counted
    policy = C.policy_spec(c)
    C.require(policy.source != "pretrain", "policy.source",
              "a reward model starts from a trained policy: 'workdir', 'gguf' or 'hf'")
    spec = RMSpec(
        seed=int(c.seed), mesh=C.mesh_config(c), model=C.model_spec(c), policy=policy, step=C.step_config(c),
        optim_fields=C.section(c, "optim"), path=d.path, eval_path=d.eval_path, n_heldout=d.n_heldout,
        fields=C.build(PreferenceFieldMap, "data.fields", **{**C.section(d, "fields"), "keep": tuple(d.fields.keep)}),
        on_error=d.on_error,
        pipeline=C.build(PairPipelineConfig, "data", batch_size=d.batch_size, seq_len=d.seq_len,
                         template=C.template(c), view=rm.view, seed=int(c.seed),
                         num_epochs=None if rm.steps else rm.epochs),
        rm=rm, checkpoint_every=c.checkpoint.every, checkpoint_keep=c.checkpoint.keep,
    )
    C.check_rows(spec.mesh, spec.pipeline.batch_size, spec.step.micro_batches, None, "data.batch_size",
                 "pairs per batch")
    return spec


def run(spec: RMSpec, workdir: str) -> dict:
    with Session(workdir, spec.mesh, keep=spec.checkpoint_keep) as session:
        # ── the preference pairs: train, and held out for the pair accuracy ──────────────────────
        pairs, heldout = train_and_heldout(
            lambda path: read_preference_file(path, spec.fields, spec.on_error)[0], spec.path, spec.eval_path,
            spec.n_heldout)

        # ── the decoder of the policy + a scalar head; every pair tokenised before training ──────
        policy = load_policy(spec.policy, spec.model, session.mesh)
        tokenizer = policy.tokenizer
        encoded, truncated = encode_pairs(pairs, tokenizer, spec.pipeline)
        held_encoded, held_truncated = encode_pairs(heldout, tokenizer, spec.pipeline)
        dataset = make_pair_dataset(encoded, tokenizer.pad_id, spec.pipeline)
        steps = spec.rm.steps or len(dataset)
        console.say("data", f"{spec.path}: {len(pairs):,} pairs ({len(heldout)} held out), view {spec.rm.view}, "
                            f"template {spec.pipeline.template}, {steps} steps of {spec.pipeline.batch_size} pairs"
                            + (f"; {truncated + held_truncated} pairs cut to seq_len={spec.pipeline.seq_len}"
                               if truncated + held_truncated else ""))
        held = list(make_pair_dataset(held_encoded, tokenizer.pad_id, dataclasses.replace(
            spec.pipeline, shuffle=False, num_epochs=1))) if held_encoded else []

        # ── train state, resumed at the identical next batch ────────────────────────────────────
        rm_policy = reward_policy(policy, session.mesh, spec.rm.head_init_std)
        optimizer = make_optimizer(C.optim_from(spec.optim_fields, steps), rm_policy.params)
        state = session.init_state(rm_policy, optimizer, spec.seed, stage="rm", template=spec.pipeline.template,
                                   view=spec.rm.view)
        write_reward_record(workdir, view=spec.rm.view, template=spec.pipeline.template,
                            max_len=spec.pipeline.seq_len, started_from=policy.origin, data=spec.path)
        state, _, data_state = session.resume(state)
        batches = iter(dataset)
        if data_state:
            batches.set_state(data_state["batches"])
        objective = bradley_terry_objective()
        loss_fn = make_loss_fn(rm_policy.graphdef, objective, session.mesh, session.shardings)

        def evaluate(st, step: int) -> dict:
            return heldout_metrics(loss_fn, st.params, st.model_state, held, session.mesh, weight="pairs")

        # ── the shared supervised loop ──────────────────────────────────────────────────────────
        step_fn = make_train_step(rm_policy.graphdef, objective, optimizer, session.mesh, session.shardings, spec.step)
        fit(session, state, step_fn, batches, FitSpec(steps=steps, checkpoint_every=spec.checkpoint_every,
                                                      eval_every=spec.rm.eval_every, desc=f"RM ({spec.rm.view})"),
            evaluate=evaluate if held else None)
    return {"steps": steps}
