"""benchmarks/profile_decode.py on the tiny model: every op class of a decode step is found in the trace and
attributed (weight products, cache attention, sampling), so the profile cannot silently lose a category."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tiny_profile_attributes_the_decode_step():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as the script documents
    proc = subprocess.run([sys.executable, "benchmarks/profile_decode.py", "--tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    ops = row["op_ms_per_step"]
    for category in ("weight products", "cache attention", "sampling"):
        assert ops.get(category, 0) > 0, ops
    assert "container" not in ops  # while loops are not counted on top of their bodies
    assert row["rollout_wall_ms_per_step"] > 0
