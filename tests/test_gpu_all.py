"""benchmarks/gpu_all.sh, the one-command GPU benchmark, dry-run on CPU with --tiny: every step runs its tiny
path (the same scripts and flags as on the GPU, tiny shapes), so the GPU run cannot fail on a typo; and a
failing step fails the script."""

import json
import os
import subprocess
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_all.sh")


def _run(tmp_path, *args, **env):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OUT": str(out), "WORK": str(work), **env})
    return proc, out


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_tiny_dry_run_writes_every_result(tmp_path):
    proc, out = _run(tmp_path, "--tiny")
    assert proc.returncode == 0, proc.stderr[-6000:]
    # what comes back from the device tool: at most 8 files, none in a folder
    assert sorted(os.listdir(out)) == ["grpo_dense.jsonl", "grpo_moe.jsonl", "grpo_run.jsonl", "logs.tar.gz",
                                       "model.jsonl", "rollout.jsonl", "run.json"]
    with open(out / "run.json") as f:
        run = json.load(f)
    assert run["tiny"] and run["rc"] == 0 and not run["missing"]
    assert sorted(s["step"] for s in run["steps"]) == ["grpo_dense", "grpo_moe", "grpo_run", "model", "preflight",
                                                         "rollout"]
    assert all(s["rc"] == 0 for s in run["steps"])

    model = _jsonl(out / "model.jsonl")
    assert {(r["impl"], r["variant"]) for r in model} == {(i, v) for i in ("r1jax", "transformers")
                                                          for v in ("tiny_dense", "tiny_moe")}
    assert all(r["tokens_per_s"] > 0 for r in model)
    dense = _jsonl(out / "grpo_dense.jsonl")
    assert [r["impl"] for r in dense] == ["r1jax", "torch+transformers"] and all(r["tokens_per_s"] > 0 for r in dense)
    moe = _jsonl(out / "grpo_moe.jsonl")
    assert [(r["impl"], r["variant"]) for r in moe] == [("r1jax", "tiny_moe")]
    rollout = [r for r in _jsonl(out / "rollout.jsonl") if "batch" in r]
    assert rollout and all(r["r1jax"]["tokens_per_s"] > 0 and r["transformers"]["tokens_per_s"] > 0 for r in rollout)

    cold, warm = _jsonl(out / "grpo_run.jsonl")
    assert (cold["label"], warm["label"]) == ("cold", "warm") and cold["steps"] == warm["steps"] == 2
    c, w = cold["compile"], warm["compile"]
    assert c["compiles"] > 0 and c["cache_writes"] == c["compiles"]  # (a program built twice hits the first)
    assert w["compiles"] == 0 and w["cache_hits"] == c["compiles"] + c["cache_hits"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert {"logs/model.log", "logs/grpo_run.log", "logs/run_cold/metrics.jsonl"} <= set(names)


def test_a_failing_step_fails_the_script(tmp_path):
    bad = tmp_path / "smollm2.gguf"
    bad.write_bytes(b"not the model")
    proc, out = _run(tmp_path, "--tiny", SMOLLM2_GGUF=str(bad))
    assert proc.returncode == 1
    assert "bad_sha256" in proc.stderr
    with open(out / "run.json") as f:
        run = json.load(f)
    assert run["rc"] == 1 and run["steps"] == [{"step": "preflight", "rc": 1, "seconds": run["steps"][0]["seconds"]}]
    assert not (out / "model.jsonl").exists()  # stopped before spending time on any benchmark


def test_a_failing_benchmark_stops_its_lane_and_fails_the_script_keeping_its_log(tmp_path):
    # a transformers that cannot be imported: found by the preflight, fatal to the first step of each lane
    # (bench_model's peer raises; bench_grpo reports its peer's error as a row, which counts as a failure)
    fake = tmp_path / "fake" / "transformers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('r1jax test: a broken transformers')\n")
    proc, out = _run(tmp_path, "--tiny", PYTHONPATH=str(tmp_path / "fake"))
    assert proc.returncode != 0
    with open(out / "run.json") as f:
        run = json.load(f)
    steps = {s["step"]: s["rc"] for s in run["steps"]}
    assert steps == {"preflight": 0, "model": steps["model"], "grpo_dense": steps["grpo_dense"]}
    assert steps["model"] != 0 and steps["grpo_dense"] != 0  # and each lane stopped there
    with tarfile.open(out / "logs.tar.gz") as tar:
        log = tar.extractfile("logs/model.log").read().decode()
    assert "r1jax test: a broken transformers" in log
    assert "r1jax test: a broken transformers" in (out / "grpo_dense.jsonl").read_text()  # kept


def test_a_step_past_the_budget_is_stopped_and_fails_the_script(tmp_path):
    proc, out = _run(tmp_path, "--tiny", GPU_ALL_BUDGET_S="28")  # the first steps get a few seconds each
    assert proc.returncode != 0
    with open(out / "run.json") as f:
        steps = {s["step"]: s for s in json.load(f)["steps"]}
    assert steps["model"]["rc"] == 124 and steps["model"]["seconds"] < 28
    assert "killed at its cap" in proc.stderr
