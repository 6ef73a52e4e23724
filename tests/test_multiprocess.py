"""Multi-controller JAX on one machine: `r1jax launch -n 2 --cpu_devices 4` runs the RL stage as two JAX
processes of 4 CPU devices each (jax.distributed on localhost, gloo collectives, a reward server per
process), and must give what one process of 8 devices gives at the same seed: the same parameters and
the same metrics rows, held-out evaluation included. One process killed with SIGKILL ends the job (the
launcher stops the other); the same command then resumes from the last checkpoint and ends where the
uninterrupted run ends, and its export equals the single process's. An MoE policy with its expert axis
spanning both processes does the same, and a reward model scores the same rows on two processes as on one."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

DENSE = ["--config.model.overrides.d_model=64", "--config.model.overrides.n_layers=2",
         "--config.model.overrides.mlp_dim=128"]
MOE = ["--config.model.variant=tiny_moe", "--config.model.overrides={}", "--config.model.overrides.n_mtp=0"]
PRETRAIN = ["--config.pretrain.steps=2", "--config.pretrain.n_docs=200", "--config.pretrain.batch_size=8",
            "--config.pretrain.seq_len=160"]
RL = ["--config.data.n_train=16", "--config.data.n_eval=2", "--config.data.prompts_per_step=2",
      "--config.grpo.group_size=4", "--config.rollout.max_new_tokens=16", "--config.eval.k=2",
      "--config.eval.every=2", "--config.checkpoint.every=1", "--config.reward.workers=1",
      "--config.grpo.beta=0.01", "--config.rl.ref_refresh_every=2",
      # a reward the few-step base model earns unevenly (the share of its words in English), on every row
      # (truncated ones too): groups differ, so the updates move the parameters and the comparison has teeth
      "--config.reward.weights.language=1.0", "--config.grpo.mask_truncated=False"]
STEPS = 5
UNTIMED = ("time/", "compile/", "throughput/")


def _env(devices: int | None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _single(*args):
    return subprocess.run([sys.executable, "-m", "r1jax.main", *args], env=_env(8), capture_output=True,
                          text=True, timeout=900)


def _launch_cmd(*args):
    return [sys.executable, "-m", "r1jax.main", "launch", "-n", "2", "--cpu_devices", "4", "--", *args]


def _ok(proc):
    assert proc.returncode == 0, (proc.stdout or "")[-2000:] + (proc.stderr or "")[-4000:]


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(UNTIMED)} for r in rows]


def _params(workdir, step):
    """The saved parameters at `step` as numpy, read with orbax alone (no r1jax code)."""
    path = os.path.join(workdir, "checkpoints", str(step), "policy")
    ckpt = ocp.PyTreeCheckpointer()
    meta = ckpt.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    return jax.tree.leaves(ckpt.restore(path, restore_args=args)["params"])


def _assert_same_run(a, b, step):
    rows_a, rows_b = _rows(a), _rows(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == list(range(step + 1))
    for ra, rb in zip(rows_a, rows_b):
        assert set(ra) == set(rb), ra["step"]
        for key in ra:
            np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, atol=1e-6, err_msg=f"step {ra['step']} {key}")
    assert "eval/pass@1" in rows_b[0] and "eval/cons@k" in rows_b[-1]  # evaluated over both processes
    assert max(r.get("grpo/grad_norm", 0.0) for r in rows_a) > 0  # the updates did something
    pa, pb = _params(a, step), _params(b, step)
    assert len(pa) == len(pb) > 0
    for x, y in zip(pa, pb):
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-6)
    assert max(float(np.abs(x).max()) for x in pa) > 0.1


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _process_id(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    return int(env.get(b"R1JAX_PROCESS_ID", b"-1"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mp") / "base")
    _ok(_single("pretrain", f"--workdir={workdir}", *DENSE, *PRETRAIN))
    return workdir


def test_two_processes_equal_one_and_a_killed_process_resumes(base, tmp_path):
    # DAPO's dynamic sampling on: refilled batches are assembled on the host and must come back as the
    # global arrays the sharded programs take, the same on every process
    args = ["rl", *DENSE, *RL, "--config.policy.source=workdir", f"--config.policy.path={base}",
            f"--config.rl.steps={STEPS}", "--config.rl.dynamic_sampling=True", "--config.rl.dynamic_sampling_rounds=2"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _ok(_single(*args, f"--workdir={one}"))

    # two processes; SIGKILL process 1 once the first checkpoint is committed
    job = subprocess.Popen(_launch_cmd(*args, f"--workdir={two}"), env=_env(None), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not os.path.isdir(os.path.join(two, "checkpoints", "1")) and job.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert job.poll() is None, job.stdout.read()[-4000:]
    victim = next(c for c in _children(job.pid) if _process_id(c) == 1)
    os.kill(victim, signal.SIGKILL)
    out, _ = job.communicate(timeout=180)  # the launcher ends the job: no process left hanging
    assert job.returncode == 128 + signal.SIGKILL, out[-4000:]
    assert "process 1 exited with status 137" in out
    steps_saved = sorted(int(s) for s in os.listdir(os.path.join(two, "checkpoints")) if s.isdigit())
    assert steps_saved and steps_saved[-1] < STEPS, steps_saved

    # the same command again resumes and ends exactly where one process of 8 devices ended
    resumed = subprocess.run(_launch_cmd(*args, f"--workdir={two}"), env=_env(None), capture_output=True,
                             text=True, timeout=900)
    _ok(resumed)
    assert f"resuming from step {steps_saved[-1]}" in resumed.stdout + resumed.stderr
    _assert_same_run(one, two, STEPS)
    assert any(r.get("rollout/dynamic_sampling_rounds", 0) > 0 for r in _rows(one))  # a refill happened

    # export of the checkpoint sharded over both processes: every process gathers, process 0 writes
    from safetensors.numpy import load_file

    _ok(_single("export", one, str(tmp_path / "hf_one")))
    _ok(subprocess.run(_launch_cmd("export", two, str(tmp_path / "hf_two")), env=_env(None), capture_output=True,
                       text=True, timeout=300))
    assert sorted(os.listdir(tmp_path / "hf_two")) == sorted(os.listdir(tmp_path / "hf_one"))
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("hf_one", "hf_two"))
    assert sorted(a) == sorted(b) and len(a) > 0
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)


def test_moe_expert_axis_across_two_processes(tmp_path):
    base = str(tmp_path / "moe_base")
    _ok(_single("pretrain", f"--workdir={base}", *MOE, *PRETRAIN))
    args = ["rl", *MOE, *RL, "--config.mesh.expert=8", "--config.rl.routing_replay=True",
            "--config.policy.source=workdir", f"--config.policy.path={base}", "--config.rl.steps=2"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _ok(_single(*args, f"--workdir={one}"))
    _ok(subprocess.run(_launch_cmd(*args, f"--workdir={two}"), env=_env(None), capture_output=True, text=True,
                       timeout=900))
    _assert_same_run(one, two, 2)


_RM_SCRIPT = '''
import argparse, dataclasses, json, sys
from r1jax.main import _init_distributed
_init_distributed(argparse.Namespace())
import jax, numpy as np
from r1jax.data.templates import format_r1_response
from r1jax.model import create_sharded
from r1jax.model.config import get_variant
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.trainer import reward_model as R
from r1jax.trainer.policy import Policy
from r1jax.trainer.state import split_model_state


class CharTokenizer:
    pad_id, eos_id, bos_id, vocab_size = 0, 1, None, 128

    def encode(self, text):
        return [3 + (b % 125) for b in text.encode()]


mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
cfg = dataclasses.replace(get_variant("tiny_dense"), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128,
                          vocab_size=128)
graphdef, full = create_sharded(cfg, mesh, 0)
rm = R.reward_policy(Policy(cfg, graphdef, *split_model_state(full), CharTokenizer(), "test"), mesh,
                     head_init_std=0.5)
record = {"view": "response", "template": "chatml", "max_len": 128, "buckets": [64, 128]}
model = R.RewardModel(cfg, rm.graphdef, rm.params, rm.model_state, CharTokenizer(), record, mesh, batch_rows=8)
rng = np.random.default_rng(0)
questions = [f"Sort {' '.join(map(str, rng.integers(0, 50, size=3)))}" for _ in range(11)]
responses = [format_r1_response("sort them", "x" * int(rng.integers(1, 90))) for _ in range(11)]
scores = model.score(questions, responses)
with open(sys.argv[1] + f".{jax.process_index()}", "w") as f:
    json.dump(dict(processes=jax.process_count(), scores=scores.tolist()), f)
'''


def test_reward_model_scores_the_same_rows_on_two_processes(tmp_path):
    """The reward models of RL for all scenarios score the global batch on every process (MixedScorer):
    two processes of 4 devices give the scores one process of 8 gives, on the same mesh shape."""
    from r1jax import launcher

    script = tmp_path / "score.py"
    script.write_text(_RM_SCRIPT)
    _ok(subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=_env(8), capture_output=True,
                       text=True, timeout=300))
    address = f"localhost:{launcher.free_port()}"
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "two")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=launcher.child_env(_env(None), i, 2, address, cpu_devices=4, gpus_per_process=0))
             for i in range(2)]
    for p in procs:
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, log[-4000:]
    one = json.loads((tmp_path / "one.0").read_text())
    two = [json.loads((tmp_path / f"two.{i}").read_text()) for i in range(2)]
    assert one["processes"] == 1 and [r["processes"] for r in two] == [2, 2]
    assert len(one["scores"]) == 11 and np.std(one["scores"]) > 0
    for r in two:
        np.testing.assert_allclose(r["scores"], one["scores"], rtol=1e-5, atol=1e-6)
