"""A stage's run directory and everything that outlives one step: mesh, train state, resume,
metrics, checkpoints.

    session = Session(workdir, mesh_cfg, keep=2)
    state = session.init_state(policy, optimizer, seed)       # sharded on session.mesh
    state, extras, data_state = session.resume(state, extras={"ref": ref})
    ...
    session.log(step, scalars)
    session.save(step, state, extras, data_state)             # async, atomic
    session.close()

Layout of a workdir (every stage): policy.json + tokenizer/ (what the policy is, so the workdir is
a policy source for the next stage), checkpoints/<step>/{policy,train,data}, metrics.jsonl,
samples.jsonl, tb/. Every metrics row also counts the programs compiled so far in this session
(`compile/*`, r1jax.trainer.compilation). A stage started again on the same workdir resumes from its
last checkpoint: same parameters, optimizer, rng stream and data position; metrics continue without gaps or repeats.
"""

from __future__ import annotations

import os

import jax
from jax.sharding import Mesh

from r1jax import console, fileio
from r1jax.checkpoint import CheckpointManager, abstract_state
from r1jax.metrics import MetricsWriter
from r1jax.model import param_counts, replicated_params
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.trainer import compilation
from r1jax.trainer.policy import CHECKPOINT_DIR, Policy, write_policy_record
from r1jax.trainer.state import TrainState, init_train_state, train_state_shardings


class Session:
    def __init__(self, workdir: str, mesh_cfg: MeshConfig, keep: int = 2, mesh: Mesh | None = None):
        self.workdir = workdir
        fileio.makedirs(workdir)  # a local path or a remote URI (gs://)
        self.mesh = mesh if mesh is not None else make_mesh(mesh_cfg)
        self.is_main = jax.process_index() == 0
        self.ckpt = CheckpointManager(os.path.join(workdir, CHECKPOINT_DIR), keep=keep)
        self.start_step = self.ckpt.latest_step() or 0
        # rows are written as `step + 1` after each update: resuming from checkpoint k keeps rows <= k
        self.writer = MetricsWriter(workdir, start_step=self.start_step + 1 if self.start_step else 0,
                                    enabled=self.is_main)
        self.shardings = None
        self._compiled0 = compilation.totals()  # the run's compiles so far, logged with every metrics row
        console.say("workdir", f"{workdir}: {f'resuming from step {self.start_step}' if self.start_step else 'new run'}"
                               f", mesh {' '.join(f'{k}={v}' for k, v in self.mesh.shape.items())}")

    def init_state(self, policy: Policy, optimizer, seed: int, stage: str, **record) -> TrainState:
        """The train state of `policy` on this mesh; records the policy in the workdir."""
        unsharded = replicated_params(policy.params)
        if unsharded:  # a forgotten logical axis would cost a full copy of these on every device
            raise ValueError(f"config.mesh {dict(self.mesh.shape)}: large parameters left fully replicated: "
                             f"{unsharded[:8]}")
        write_policy_record(self.workdir, policy, stage, **record)
        cfg = policy.model_cfg
        console.say("policy", f"{policy.origin}: {cfg.arch}, {cfg.n_layers} layers, d={cfg.d_model}, "
                              f"{console.millions(param_counts(cfg)['total'])} parameters, {cfg.param_dtype}")
        self.shardings = train_state_shardings(policy.params, policy.model_state, optimizer, self.mesh)
        return init_train_state(policy.params, policy.model_state, optimizer, self.mesh, seed)

    def resume(self, state: TrainState, extras: dict | None = None):
        """(state, extras, data_state) of the last checkpoint, or the given ones in a new run. `extras`
        are pytrees of arrays checkpointed with the state (π_ref), laid out like the ones given;
        None entries are not saved."""
        extras = dict(extras or {})
        if not self.start_step:
            return state, extras, None
        live = {k: v for k, v in extras.items() if v is not None}
        sh = self.shardings
        policy_like = {"params": state.params, "model_state": state.model_state}
        policy_sh = {"params": sh.params, "model_state": sh.model_state}
        train_like = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng, **live}
        train_sh = {"opt_state": sh.opt_state, "step": sh.step, "rng": sh.rng,
                    **{k: jax.tree.map(lambda x: x.sharding, v) for k, v in live.items()}}
        items, data_state = self.ckpt.restore(self.start_step, {
            "policy": abstract_state(policy_sh, policy_like), "train": abstract_state(train_sh, train_like)})
        p, t = items["policy"], items["train"]
        state = TrainState(params=p["params"], model_state=p["model_state"], opt_state=t["opt_state"],
                           step=t["step"], rng=t["rng"])
        return state, {**extras, **{k: t[k] for k in live}}, data_state

    def log(self, step: int, scalars: dict) -> None:
        """One metrics row, with the programs compiled since the session opened (a count that still
        grows after the first steps is a recompilation)."""
        c = compilation.since(self._compiled0)
        self.writer.write(step, {**scalars, "compile/count": c["compiles"], "compile/seconds": c["compile_s"],
                                 "compile/cache_hits": c["cache_hits"]})

    def log_samples(self, step: int, samples: list[dict]) -> None:
        self.writer.write_samples(step, samples)

    def save(self, step: int, state: TrainState, extras: dict | None = None, data_state: dict | None = None,
             force: bool = False) -> None:
        if self.is_main:
            console.say("checkpoint", f"step {step} -> {os.path.join(self.ckpt.directory, str(step))}")
        self.ckpt.save(step, {
            "policy": {"params": state.params, "model_state": state.model_state},
            "train": {"opt_state": state.opt_state, "step": state.step, "rng": state.rng,
                      **{k: v for k, v in (extras or {}).items() if v is not None}},
        }, data_state=data_state, force=force)
        self.writer.flush()  # a remote metrics file holds every row the checkpoint covers

    def close(self) -> None:
        self.ckpt.close()
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
