"""`r1jax pipeline --config configs/r1.py:smoke`: every step of the R1 recipe from nothing (base model,
preference data, two reward models, cold-start data and SFT, reasoning RL with the language reward,
rejection sampling, general SFT data, SFT of the base model, RL for all scenarios, the per-stage report),
killed with SIGKILL once inside a stage and once between stages, and finished by running the same
command again: finished steps are skipped, the interrupted stage resumes from its checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

from r1jax.fileio import read_jsonl

CMD = [sys.executable, "-m", "r1jax.main", "pipeline", "--config", "configs/r1.py:smoke"]


def _env():
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def _done(workdir) -> dict:
    path = os.path.join(workdir, "pipeline.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)["done"]


def _kill_when(workdir, ready, timeout=600):
    """Starts the pipeline and SIGKILLs its whole process group (the reward server too) once ready()."""
    proc = subprocess.Popen([*CMD, f"--workdir={workdir}"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the pipeline ended before it could be killed: {proc.stderr.read()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_pipeline_smoke_killed_inside_and_between_stages_resumes(tmp_path):
    workdir = str(tmp_path / "r1")
    # ── kill 1: inside the cold-start SFT, after its first checkpoint ───────────────────────────
    sft_ckpt = os.path.join(workdir, "cold_start", "checkpoints", "1")
    _kill_when(workdir, lambda: os.path.isdir(sft_ckpt))
    done1 = _done(workdir)
    assert {"base", "preferences", "rm_helpful", "rm_harmless", "cold_start_data"} <= set(done1)
    assert "cold_start" not in done1

    # ── kill 2: between stages, as soon as the reasoning RL is recorded finished ────────────────
    _kill_when(workdir, lambda: "reasoning_rl" in _done(workdir))
    done2 = _done(workdir)
    for name, record in done1.items():  # nothing finished before ran again
        assert done2[name] == record
    # the interrupted SFT went on from its checkpoint: one metrics row per logged step, none repeated
    steps = [r["step"] for r in read_jsonl(os.path.join(workdir, "cold_start", "metrics.jsonl"))]
    assert steps == sorted(set(steps)) and steps[0] == 0

    # ── the same command finishes the recipe ─────────────────────────────────────────────────
    proc = subprocess.run([*CMD, f"--workdir={workdir}"], env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "reasoning_rl: finished before" in proc.stdout + proc.stderr
    done3 = _done(workdir)
    assert list(done3) == ["base", "preferences", "rm_helpful", "rm_harmless", "cold_start_data", "cold_start",
                           "reasoning_rl", "rejection", "general_sft", "sft_data", "sft", "rl_all"]
    for name, record in done2.items():
        assert done3[name] == record

    # RL for all scenarios: both sources in every step, each with its own rewards
    rows = read_jsonl(os.path.join(workdir, "rl_all", "metrics.jsonl"))
    train = [r for r in rows if "grpo/loss" in r]
    assert len(train) == 2
    for r in train:
        assert {"reward/data/accuracy", "reward/data/language", "reward/general/rm_helpful",
                "reward/general/rm_harmless", "reward/general/format"} <= set(r)
        assert r["reward/data/share"] == r["reward/general/share"] == 0.5
    assert "eval/general/rm_helpful" in rows[0] and "eval/language" in rows[0]
    # the SFT of the base model read the rejection samples and the general data
    with open(os.path.join(workdir, "sft", "policy.json")) as f:
        assert json.load(f)["started_from"].startswith(f"workdir:{os.path.join(workdir, 'base')}")

    # the per-stage table: one row per evaluated policy, the same columns for each
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)["stages"]
    assert list(report) == ["base", "cold_start", "reasoning_rl", "sft", "rl_all"]
    for row in report.values():
        assert {"eval/pass@1", "eval/language", "eval/general/rm_helpful", "eval/general/rm_harmless"} <= set(row)
    assert os.path.isfile(os.path.join(workdir, "report.md"))
    assert os.path.isfile(os.path.join(workdir, "plots", "stages.png"))
