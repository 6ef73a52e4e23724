"""A tiny GRPO training run with checkpoints, for the exact-resume and crash tests.

    python ckpt_driver.py --dir D --steps N --every K [--die-after S | --die-mid-save S] --out p.npz

Runs update steps on tiny_dense over a (fsdp=2, tensor=2) mesh of 4 CPU devices with deterministic
synthetic batches; the step's key fold_in(seed, step) perturbs the advantages, so the restored rng
matters. Resumes from the latest checkpoint in D. --die-after S: SIGKILL itself right after step S
(not a checkpoint step: the crash lands between checkpoints). --die-mid-save S: start the async save
of step S, wait until orbax's tmp directory exists, then SIGKILL (a crash mid-save).
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import glob
import json
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.checkpoint import CheckpointManager, abstract_state
from r1jax.grpo import GRPOConfig, make_update_step
from r1jax.grpo.synthetic import synthetic_batch
from r1jax.model import create_sharded, get_variant
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.trainer.optimizer import OptimConfig, make_optimizer
from r1jax.trainer.state import init_train_state, shard_batch, split_model_state, train_state_shardings
from r1jax.trainer.step import StepConfig, check_finite, step_key

SEED = 0


def flat_params(state) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--every", type=int, required=True)
    ap.add_argument("--die-after", type=int, default=-1)
    ap.add_argument("--die-mid-save", type=int, default=-1)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    mesh = make_mesh(MeshConfig(fsdp=2, tensor=2))
    model_cfg = get_variant("tiny_dense")
    graphdef, model_state = create_sharded(model_cfg, mesh, SEED)
    params, rest = split_model_state(model_state)
    opt_cfg = OptimConfig(learning_rate=3e-3, warmup_steps=2, total_steps=args.steps)
    optimizer = make_optimizer(opt_cfg, params)
    shardings = train_state_shardings(params, rest, optimizer, mesh)
    state = init_train_state(params, rest, optimizer, mesh, SEED)
    grpo_cfg = GRPOConfig(group_size=4, beta=0.01)
    update = make_update_step(graphdef, grpo_cfg, optimizer, mesh, shardings,
                              StepConfig(micro_batches=2, logprob_chunk=8))

    ckpt = CheckpointManager(args.dir, keep=2)
    data_state = {"next_step": 0}
    if ckpt.latest_step() is not None:
        items, data_state = ckpt.restore(None, {"train": abstract_state(shardings, like=state)})
        state = items["train"]
        print(json.dumps({"event": "restored", "step": int(state.step), "data": data_state}), flush=True)
    assert int(state.step) == data_state["next_step"], (int(state.step), data_state)

    for step in range(data_state["next_step"], args.steps):
        batch = synthetic_batch(1000 + step, 2, 4, 24, model_cfg.vocab_size)
        noise_b = 0.01 * jax.random.normal(step_key(state, step), (8,))
        batch = batch.replace(advantages_b=(jnp.asarray(batch.advantages_b) + noise_b).astype(jnp.float32))
        state, metrics = update(state, shard_batch(batch, mesh))
        check_finite(metrics, step)
        done = step + 1
        print(json.dumps({"event": "step", "step": done, "loss": float(metrics["loss"])}), flush=True)
        if done % args.every == 0 or done == args.steps:
            ckpt.save(done, {"train": state}, data_state={"next_step": done})
            if done == args.die_mid_save:
                while not glob.glob(os.path.join(args.dir, f"{done}.orbax-checkpoint-tmp*")):
                    time.sleep(0.001)
                os.kill(os.getpid(), signal.SIGKILL)
        if done == args.die_after:
            ckpt.wait_until_finished()
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt.close()
    if args.out:
        np.savez(args.out, **flat_params(state))
    print(json.dumps({"event": "done", "step": int(state.step)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
