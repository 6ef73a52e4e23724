"""The main job end to end, as a user runs it: `r1jax train` in a subprocess on 8 simulated CPU
devices with the real reward server process; kill -9 and resume with the same command; bad
configs fail at start-up naming the field."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

# Small enough for CI: a few pretraining steps, 2 prompts x G=4 = 8 rollouts (one per device).
TINY = [
    "--config.pretrain.steps=6", "--config.pretrain.n_docs=300", "--config.pretrain.batch_size=8",
    "--config.pretrain.seq_len=160",
    "--config.model.overrides.d_model=64", "--config.model.overrides.n_layers=2",
    "--config.model.overrides.mlp_dim=128",
    "--config.data.n_train=16", "--config.data.n_eval=2", "--config.data.prompts_per_step=2",
    "--config.grpo.group_size=4", "--config.rollout.max_new_tokens=16",
    "--config.eval.k=2", "--config.eval.every=2", "--config.rl.samples_every=1",
    "--config.checkpoint.every=1", "--config.rl.steps=3", "--config.reward.workers=1",
    # a KL term against π_ref, refreshed every 2 steps: resuming from step 1 must still use the old π_ref
    "--config.grpo.beta=0.01", "--config.rl.ref_refresh_every=2",
    # a reward the few-step base earns unevenly (the share of its words in English), on every row (truncated
    # ones too): groups differ, so the updates move the parameters and resuming must restore real state
    "--config.reward.weights.language=1.0", "--config.grpo.mask_truncated=False",
]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "r1jax.main", "train", f"--workdir={workdir}", *TINY, *extra]


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _final_params(workdir, step):
    """Leaves of the saved TrainState at `step`, read back with orbax (no model code involved)."""
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "policy")
    tree = ocp.PyTreeCheckpointer().restore(path)
    return [np.asarray(x) for x in __import__("jax").tree.leaves(tree["params"])]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "a")
    proc = subprocess.run(_cmd(workdir), env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def test_two_plus_grpo_steps_end_to_end_on_8_devices(uninterrupted):
    rows = _metrics(uninterrupted)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "eval/pass@1" in rows[0] and "eval/pass@1" in rows[2] and "eval/pass@1" in rows[3]
    for r in rows[1:]:
        for key in ("reward/total", "reward/accuracy", "reward/format", "grpo/loss", "grpo/grad_norm",
                    "grpo/entropy", "grpo/old_vs_sampler_abs", "rollout/length_mean", "time/rollout_s",
                    "time/reward_s", "time/update_s", "reward/invalid_frac", "grpo/kl"):
            assert key in r and np.isfinite(r[key]), key
        assert r["reward/invalid_frac"] == 0.0  # the real reward server answered every item
        assert r["grpo/old_vs_sampler_abs"] < 1e-4  # sampler and trainer agree on the log-probs
    assert max(r["grpo/grad_norm"] for r in rows[1:]) > 0  # the updates did something
    for name in ("accuracy.png", "response_length.png", "reflection.png"):
        assert os.path.getsize(os.path.join(uninterrupted, "plots", name)) > 1000
    with open(os.path.join(uninterrupted, "samples.jsonl")) as f:
        assert any("completion" in json.loads(line) for line in f)


ASYNC = ["--config.rl.max_staleness=1", "--config.rl.sampler_devices=4"]  # 4 trainer + 4 sampler devices


@pytest.fixture(scope="module")
def uninterrupted_async(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "async")
    proc = subprocess.run(_cmd(workdir, *ASYNC), env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def _kill_after_first_checkpoint_then_rerun(workdir, *extra):
    proc = subprocess.Popen(_cmd(workdir, *extra), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    done = os.path.join(workdir, "checkpoints", "1")
    deadline = time.time() + 900
    while not os.path.isdir(done) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_before = [r["step"] for r in _metrics(workdir)]
    assert 0 in steps_before and max(steps_before) <= 2
    again = subprocess.run(_cmd(workdir, *extra), env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert [r["step"] for r in _metrics(workdir)] == [0, 1, 2, 3]  # no gap, no repeat


def test_kill_9_then_same_command_resumes_exactly(uninterrupted, tmp_path):
    workdir = str(tmp_path / "b")
    _kill_after_first_checkpoint_then_rerun(workdir)
    # Same data order, same rng stream, same rewards: bit-identical to the run that was never killed.
    for a, b in zip(_final_params(uninterrupted, 3), _final_params(workdir, 3)):
        np.testing.assert_array_equal(a, b)
    resumed = _metrics(workdir)[3]
    reference = _metrics(uninterrupted)[3]
    assert resumed["reward/total"] == reference["reward/total"]


def test_async_rollout_on_its_own_devices_resumes_exactly(uninterrupted_async, tmp_path):
    """max_staleness=1 with the sampler on 4 of the 8 devices: the rollout of step t+1 is drawn by the
    policy of step t; a checkpoint keeps that policy, so a killed run redraws the in-flight rollout."""
    rows = _metrics(uninterrupted_async)
    assert [r["rollout/staleness"] for r in rows[1:]] == [0.0, 1.0, 1.0]
    # the rollout of step 3 was drawn while step 2 trained
    assert rows[3]["time/rollout_start"] < rows[2]["time/update_end"]
    workdir = str(tmp_path / "async_killed")
    _kill_after_first_checkpoint_then_rerun(workdir, *ASYNC)
    for a, b in zip(_final_params(uninterrupted_async, 3), _final_params(workdir, 3), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _metrics(workdir)[3]["reward/total"] == rows[3]["reward/total"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.grpo.group_sise=4"], "group_sise"),
        (["--config.grpo.group_size=1"], "config.grpo.group_size"),
        (["--config.data.prompts_per_step=3"], "config.data.prompts_per_step"),
        (["--config.grpo.loss_agg=bogus"], "config.grpo: GRPOConfig.loss_agg"),
        (["--config.data.template=bogus"], "config.data.template"),
        (["--config.grpo.eps_low=5"], "config.grpo"),
        (["--config.eval.every=0"], "config.eval: every must be >= 1"),
        (["--config.data.task=file"], "config.data.path"),
        (["--config.trainer.micro_batches=3"], "config.trainer.micro_batches"),
        # an override that would do nothing on this path is an error, not silence
        (["--config.data.path=x.jsonl"], "config.data.path: does nothing with data.task='arithmetic'"),
        (["--config.policy.source=workdir", "--config.policy.path=/nonexistent"],
         "config.pretrain.steps: does nothing with policy.source='workdir'"),
        (["--config.reward.urls=http://127.0.0.1:9"], "config.reward.urls"),
    ],
)
def test_bad_config_fails_at_start_naming_the_field(tmp_path, overrides, message):
    cmd = _cmd(str(tmp_path / "c"), *overrides)
    if any("reward.urls" in o for o in overrides):  # reward.workers would do nothing with a fleet
        cmd.remove("--config.reward.workers=1")
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not os.path.exists(tmp_path / "c" / "base"), "failed before any work was done"


def test_run_directory_keeps_the_resolved_config_that_config_print_shows(uninterrupted):
    with open(os.path.join(uninterrupted, "config.json")) as f:
        kept = json.load(f)
    overrides = [a for a in TINY]
    proc = subprocess.run([sys.executable, "-m", "r1jax.main", "config", "--print", *overrides], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == kept
    assert kept["rl"]["steps"] == 3 and kept["grpo"]["beta"] == 0.01


def test_second_run_starts_from_the_first_runs_base_model_without_pretraining(uninterrupted, tmp_path):
    base = os.path.join(uninterrupted, "base")
    workdir = str(tmp_path / "reuse")
    no_pretrain = [a for a in TINY if not a.startswith("--config.pretrain.")]
    cmd = [sys.executable, "-m", "r1jax.main", "train", f"--workdir={workdir}", *no_pretrain,
           "--config.policy.source=workdir", f"--config.policy.path={base}", "--config.rl.steps=1"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not os.path.exists(os.path.join(workdir, "base")), "pretrained again"
    assert "pretrain base" not in proc.stderr  # no pretraining progress bar either
    with open(os.path.join(workdir, "policy.json")) as f:
        assert json.load(f)["started_from"].startswith(f"workdir:{base}@")
    assert [r["step"] for r in _metrics(workdir)] == [0, 1]
