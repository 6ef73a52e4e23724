"""Every stage from the command line, as a user chains them, on the tiny model and 8 simulated CPU
devices: pretrain -> sft -> sample -> sft -> rl -> eval -> export, each stage reading the previous
stage's workdir; kill -9 mid-SFT resumes bit-identically; rejection sampling resumes at the next
batch with the identical samples; eval runs GSM8K-100 and HumanEval-164 whole."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from r1jax.data import procedural
from r1jax.data.base_corpus import worked_solution
from r1jax.data.templates import format_r1_response

MODEL = ["--config.model.overrides.d_model=64", "--config.model.overrides.n_layers=2",
         "--config.model.overrides.mlp_dim=128", "--config.model.overrides.max_position_embeddings=4096"]
PRETRAIN = ["--config.pretrain.steps=6", "--config.pretrain.n_docs=300", "--config.pretrain.batch_size=8",
            "--config.pretrain.seq_len=160", "--config.data.n_train=16", "--config.data.n_eval=2", *MODEL]
SERVER = ["--config.reward.workers=1"]
R1 = ["--config.data.template=r1", "--config.rollout.max_prompt_len=160", "--config.rollout.stop_strings=()"]


def _env():
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def _r1jax(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "r1jax.main", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _started_from(workdir):
    with open(os.path.join(workdir, "policy.json")) as f:
        return json.load(f)["started_from"]


def _policy_params(workdir, step):
    import jax
    import orbax.checkpoint as ocp

    tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "policy"))
    return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    _r1jax("pretrain", f"--workdir={root / 'base'}", *PRETRAIN)
    # cold-start data in the readable format: worked solutions with a boxed summary
    rows = []
    for i in range(40):
        ex = procedural.generate(procedural.ProceduralConfig("arithmetic", 10**6, 2, seed=77), i)
        steps, value = worked_solution(ex["meta"]["expression"])
        rows.append({"question": ex["question"],
                     "response": format_r1_response(steps, f"So the answer is \\boxed{{{value}}}.")})
    with open(root / "cold.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _sft(root, name, data, policy, *extra, timeout=600):
    return _r1jax("sft", f"--workdir={root / name}", f"--config.policy.path={policy}", f"--config.data.path={data}",
                  "--config.data.n_heldout=8", "--config.data.seq_len=128", "--config.sft.epochs=1",
                  "--config.eval_task.n_eval=2", "--config.eval.k=2", "--config.eval.every=2",
                  "--config.checkpoint.every=1", "--config.rollout.max_new_tokens=8", *SERVER, *extra,
                  timeout=timeout)


def test_chain_sft_sample_sft_eval_export(runs):
    root = runs
    base = root / "base"
    # ── cold-start SFT of the base model: held-out loss and pass@1 logged, loss goes down ─────────
    _sft(root, "sft1", root / "cold.jsonl", base)
    rows = _read_jsonl(root / "sft1" / "metrics.jsonl")
    assert rows[0]["step"] == 0 and "heldout/loss" in rows[0] and "eval/pass@1" in rows[0]
    assert rows[-1]["heldout/loss"] < rows[0]["heldout/loss"]
    assert _started_from(root / "sft1").startswith(f"workdir:{base}@6")

    # ── rejection sampling from the SFT policy -> an SFT file and its stats ─────────────────────
    _r1jax("sample", f"--workdir={root / 'rs'}", f"--config.policy.path={root / 'sft1'}", *R1,
           "--config.data.n_train=6", "--config.sample.k=2", "--config.sample.batch_prompts=2",
           "--config.sample.keep_incorrect=True",  # the few-step policy is rarely right; keep the plumbing fed
           "--config.rollout.max_new_tokens=12", *SERVER)
    with open(root / "rs" / "stats.json") as f:
        stats = json.load(f)
    assert stats["samples"] == 12 and stats["written"] == stats["rejection"]["kept"] > 0
    assert stats["template"] == "r1" and stats["policy"].startswith(f"workdir:{root / 'sft1'}")

    # ── SFT of the base model on the rejection-sampled data (paper §2.3.3) ──────────────────────
    _sft(root, "sft2", root / "rs" / "sft_data.jsonl", base, "--config.data.n_heldout=2",
         "--config.data.seq_len=192", "--config.eval_task.task=")
    assert _started_from(root / "sft2").startswith(f"workdir:{base}")

    # (RL on an SFT policy in the readable format: tests/test_r1_pipeline_e2e.py, reasoning_rl)

    # ── evaluation of the SFT policy: report files ──────────────────────────────────────────────
    sft2_steps = [r["step"] for r in _read_jsonl(root / "sft2" / "metrics.jsonl")]
    _r1jax("eval", f"--workdir={root / 'eval'}", f"--config.policy.path={root / 'sft2'}", *R1,
           "--config.data.n_eval=4", "--config.eval.k=2", *SERVER)
    with open(root / "eval" / "arithmetic.json") as f:
        report = json.load(f)
    assert report["scalars"]["n_problems"] == 4
    assert report["settings"]["policy"].startswith(f"workdir:{root / 'sft2'}@{sft2_steps[-1]}")
    assert len(_read_jsonl(root / "eval" / "arithmetic_samples.jsonl")) == 8

    # ── export: transformers loads the checkpoint and computes the same logits ──────────────────
    _r1jax("export", str(root / "sft2"), str(root / "hf"))
    _same_logits_as_transformers(root / "sft2", root / "hf")
    again = subprocess.run([sys.executable, "-m", "r1jax.main", "export", str(root / "sft2"), str(root / "hf")],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    _r1jax("export", str(root / "sft2"), str(root / "hf"), "--overwrite")
    _same_logits_as_transformers(root / "sft2", root / "hf")


def _same_logits_as_transformers(workdir, hf_dir):
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from r1jax.parallel.mesh import single_device_mesh
    from r1jax.trainer.config import ModelSpec, PolicySpec
    from r1jax.trainer.policy import load_policy

    policy = load_policy(PolicySpec("workdir", str(workdir)), ModelSpec(), single_device_mesh())
    from flax import nnx

    model = nnx.merge(policy.graphdef, policy.params, policy.model_state)
    ids = policy.tokenizer.encode("Calculate 3 + 4 * 5. |special_token| 4 * 5 = 20.")
    hidden, _, _ = model(jnp.asarray([ids]), jnp.arange(len(ids))[None])
    ours = np.asarray(jax.device_get(model.logits(hidden)))[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)


def test_sft_killed_mid_run_resumes_bit_identically(runs):
    root = runs
    extra = ["--config.sft.epochs=2", "--config.eval_task.task="]  # 8 steps over 2 epochs, a checkpoint each
    _sft(root, "sft_ref", root / "cold.jsonl", root / "base", *extra)
    cmd = [sys.executable, "-m", "r1jax.main", "sft", f"--workdir={root / 'sft_kill'}",
           f"--config.policy.path={root / 'base'}", f"--config.data.path={root / 'cold.jsonl'}",
           "--config.data.n_heldout=8", "--config.data.seq_len=128", "--config.eval.every=2",
           "--config.checkpoint.every=1", *SERVER, *extra]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    mid = root / "sft_kill" / "checkpoints" / "5"  # in the second epoch
    deadline = time.time() + 600
    while not mid.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (root / "sft_kill" / "checkpoints" / "8").exists()
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    for a, b in zip(_policy_params(root / "sft_ref", 8), _policy_params(root / "sft_kill", 8), strict=True):
        np.testing.assert_array_equal(a, b)
    ref_rows, rows = (_read_jsonl(root / w / "metrics.jsonl") for w in ("sft_ref", "sft_kill"))
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == [0, 2, 4, 6, 8]
    assert rows[-1]["heldout/loss"] == ref_rows[-1]["heldout/loss"]


def test_rejection_sampling_resumes_at_the_next_batch(runs):
    root = runs
    args = ["sample", f"--config.policy.path={root / 'base'}", "--config.data.n_train=6", "--config.sample.k=2",
            "--config.sample.batch_prompts=2", "--config.sample.keep_incorrect=True",
            "--config.rollout.max_new_tokens=8", *SERVER]
    _r1jax(*args, f"--workdir={root / 'rs_ref'}")
    full = (root / "rs_ref" / "scored.jsonl").read_text().splitlines(keepends=True)
    assert len(full) == 12
    # a run killed while writing its second batch: one whole batch, then a torn line
    os.makedirs(root / "rs_cut")
    (root / "rs_cut" / "scored.jsonl").write_text("".join(full[:4]) + full[4][:30])
    _r1jax(*args, f"--workdir={root / 'rs_cut'}")
    assert (root / "rs_cut" / "scored.jsonl").read_text() == "".join(full)
    assert (root / "rs_cut" / "sft_data.jsonl").read_text() == (root / "rs_ref" / "sft_data.jsonl").read_text()


@pytest.mark.parametrize("variant, n_problems", [("gsm8k", 100), ("humaneval", 164)])
def test_eval_runs_a_bundled_benchmark_whole(runs, variant, n_problems):
    root = runs
    _r1jax("eval", f"--config=configs/eval.py:{variant}", f"--workdir={root / variant}",
           f"--config.policy.path={root / 'base'}", "--config.eval.k=2", "--config.eval.pass_ks=(1,2)",
           "--config.rollout.max_new_tokens=8", "--config.eval.batch_prompts=8", "--config.reward.workers=2")
    name = "gsm8k_test100" if variant == "gsm8k" else "humaneval"
    with open(root / variant / f"{name}.json") as f:
        report = json.load(f)
    assert report["scalars"]["n_problems"] == n_problems
    assert report["settings"]["temperature"] == 0.6 and report["settings"]["top_p"] == 0.95
    assert 0.0 <= report["scalars"]["pass@1"] <= report["scalars"]["pass@2"] <= 1.0
    assert report["scalars"]["invalid_frac"] == 0.0  # every sample was graded (code ran in the sandbox)
    samples = _read_jsonl(root / variant / f"{name}_samples.jsonl")
    assert len(samples) == 2 * n_problems


def test_moe_reference_keeps_its_router_bias(tmp_path):
    """π_ref is the starting policy with its router bias: after RL steps have moved the policy's MoE
    router bias, the checkpointed reference still holds the starting one."""
    moe = ["--config.model.variant=tiny_moe", "--config.model.overrides.n_mtp=0",
           "--config.model.overrides.n_layers=2"]
    _r1jax("pretrain", f"--workdir={tmp_path / 'base'}", *moe, "--config.pretrain.steps=2",
           "--config.pretrain.n_docs=100", "--config.pretrain.batch_size=8", "--config.pretrain.seq_len=160",
           "--config.data.n_train=16", "--config.data.n_eval=2")
    _r1jax("rl", f"--workdir={tmp_path / 'rl'}", "--config.policy.source=workdir",
           f"--config.policy.path={tmp_path / 'base'}", *moe, "--config.data.n_train=16", "--config.data.n_eval=2",
           "--config.data.prompts_per_step=2", "--config.grpo.group_size=4", "--config.rollout.max_new_tokens=8",
           "--config.eval.k=1", "--config.rl.steps=2", "--config.grpo.beta=0.01",
           "--config.trainer.router_bias_rate=0.01", *SERVER)
    import jax
    import orbax.checkpoint as ocp

    def router_bias(workdir, item, *keys):
        tree = ocp.PyTreeCheckpointer().restore(str(workdir / "checkpoints" / "2" / item))
        for key in keys:
            tree = tree[key]
        return [np.asarray(x) for x in jax.tree.leaves(tree)]

    base_bias = router_bias(tmp_path / "base", "policy", "model_state")
    ref_bias = router_bias(tmp_path / "rl", "train", "ref", "model_state")
    policy_bias = router_bias(tmp_path / "rl", "policy", "model_state")
    assert ref_bias and len(ref_bias) == len(base_bias) == len(policy_bias)
    for r, b in zip(ref_bias, base_bias):
        np.testing.assert_array_equal(r, b)
    assert any(np.abs(p - b).max() > 0 for p, b in zip(policy_bias, base_bias)), "the policy's bias moved"
