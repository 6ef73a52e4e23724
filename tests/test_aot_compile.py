"""launch/aot_compile.py --tiny: the GRPO update, π_old log-probs and the rollout (prefill + decode over the
MLA cache) of a tiny MoE compiled for a TPU v5p:2x2x1 topology without a TPU, through the rl stage's own
config translation. Needs libtpu importable (pip install "libtpu==0.0.42.*", or PYTHONPATH=<a --target
install>); skipped otherwise. The compile runs in a subprocess so this test process keeps its CPU backend."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# .ci/run installs libtpu with `pip install --target $R1JAX_TPU_SITE` (kept off this process's path: a
# libtpu next to jax would make every JAX process here probe for a TPU)
TPU_SITE = os.environ.get("R1JAX_TPU_SITE", "")
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None or os.path.isdir(os.path.join(TPU_SITE, "libtpu"))
pytestmark = pytest.mark.skipif(not HAVE_LIBTPU,
                                reason="libtpu is not importable: pip install 'libtpu==0.0.42.*' (213 MB, no TPU "
                                       "needed), or a --target install named by R1JAX_TPU_SITE")


def test_tiny_fit_check_compiles_every_program_for_a_tpu_topology(tmp_path):
    out = tmp_path / "fit.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
        [ROOT, *([TPU_SITE] if TPU_SITE else []), *sys.path[1:]])}
    env.pop("XLA_FLAGS", None)  # the tests' 8 simulated CPU devices are not needed there
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "aot_compile.py"), "--tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["chips"] == 4 and report["topology"] == "v5p:2x2x1"
    assert report["placeholders"] == ["policy.path"]  # nothing is read: the fit needs no checkpoint
    # the dtype policy the run loads with, and MTP dropped (tiny_moe has one MTP module)
    assert report["dtypes"] == {"params": "float32", "compute": "bfloat16", "adam_moments": "float32"}
    assert report["model"]["n_mtp"] == 0 and report["routing_replay"]
    programs = {p["program"]: p for p in report["programs"]}
    assert set(programs) == {"update", "logprobs", "rollout"}
    state_gib = report["resident_gib"]["train_state"]
    for name, p in programs.items():
        b = p["per_chip_bytes"]
        assert b["argument"] > 0 and b["temp"] > 0 and b["generated_code"] > 0, (name, b)
        assert p["flops_per_chip"] > 0 and p["fits"], (name, p)
        assert p["peak_gib"] >= p["program_gib"], (name, p)
    # the update takes the whole train state (params + Adam moments) and donates it
    update = programs["update"]["per_chip_bytes"]
    assert update["argument"] >= state_gib * 2**30 * 0.99 and update["alias"] > 0
    # the rollout's outputs hold at least the int32 tokens of every row x (prompt + new tokens), split over 4 chips
    assert programs["rollout"]["per_chip_bytes"]["output"] >= 4 * report["rows"] * report["seq_len"] // 4
    assert "update" in proc.stdout and "rollout" in proc.stdout  # the printed table
