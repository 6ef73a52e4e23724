"""CheckpointManager: mesh A -> mesh B restore, keep-N, data state, errors; and, through a
subprocess driver, kill -9 mid-save and between checkpoints with bit-identical resume."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from r1jax.checkpoint import CheckpointManager, abstract_state
from r1jax.model import create_sharded, get_variant
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.trainer.optimizer import OptimConfig, make_optimizer
from r1jax.trainer.state import init_train_state, split_model_state, train_state_shardings

DRIVER = os.path.join(os.path.dirname(__file__), "ckpt_driver.py")


def _state_on(mesh, seed=0):
    model_cfg = dataclasses.replace(get_variant("tiny_moe"), n_mtp=0, n_layers=2)
    graphdef, ms = create_sharded(model_cfg, mesh, seed)
    params, rest = split_model_state(ms)
    opt = make_optimizer(OptimConfig(frozen=("embed_tokens",)), params)
    sh = train_state_shardings(params, rest, opt, mesh)
    return init_train_state(params, rest, opt, mesh, seed=seed), sh


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def on_mesh_a():
    return _state_on(make_mesh(MeshConfig(fsdp=8)), seed=3)


def test_save_on_mesh_a_restore_on_mesh_b(tmp_path, on_mesh_a):
    mesh_b = make_mesh(MeshConfig(data=2, expert=2, tensor=2))
    state_a, _ = on_mesh_a
    state_a = state_a.replace(step=state_a.step + 5)
    like, sh_b = _state_on(mesh_b, seed=4)  # different values, same structure
    with CheckpointManager(tmp_path, keep=2) as ckpt:
        ckpt.save(5, {"train": state_a}, data_state={"epoch": 1, "pos": [3, 4]})
        ckpt.wait_until_finished()
        target = abstract_state(sh_b, like=like)
        restored, data = ckpt.restore(5, {"train": target})
        restored = restored["train"]
    assert data == {"epoch": 1, "pos": [3, 4]}
    assert int(restored.step) == 5
    for a, b in zip(_leaves(state_a), _leaves(restored)):
        np.testing.assert_array_equal(a, b)
    # restored arrays live where mesh B's rules put them
    for x, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert x.sharding.is_equivalent_to(t.sharding, x.ndim)
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(restored.params))


def test_keep_n_and_missing_steps(tmp_path, on_mesh_a):
    state, sh = on_mesh_a
    with CheckpointManager(tmp_path, keep=2) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(None, {"train": abstract_state(sh, like=state)})
        for step in (1, 2, 3):
            ckpt.save(step, {"train": state}, data_state={"step": step})
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
        with pytest.raises(FileNotFoundError, match="step 1 not in"):
            ckpt.restore(1, {"train": abstract_state(sh, like=state)})
        with pytest.raises(TypeError, match="data_state"):
            ckpt.save(4, {"train": state}, data_state=[1, 2])
        with pytest.raises(ValueError, match="unknown items"):
            ckpt.save(4, {"state": state})


def test_restore_reads_only_the_items_asked_for(tmp_path, on_mesh_a):
    """A later stage loads the `policy` item of a stage's checkpoint without knowing its optimizer."""
    state, sh = on_mesh_a
    policy = {"params": state.params, "model_state": state.model_state}
    with CheckpointManager(tmp_path, keep=1) as ckpt:
        ckpt.save(1, {"policy": policy, "train": {"opt_state": state.opt_state, "step": state.step}})
    with CheckpointManager(tmp_path, create=False) as ckpt:
        items, _ = ckpt.restore(1, {"policy": abstract_state(
            {"params": sh.params, "model_state": sh.model_state}, like=policy)})
    assert set(items) == {"policy"}
    for a, b in zip(_leaves(policy), _leaves(items["policy"]), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        CheckpointManager(tmp_path / "absent", create=False)


def _driver(tmp_path, ckpt_dir, *extra):
    cmd = [sys.executable, DRIVER, "--dir", str(ckpt_dir), "--steps", "7", "--every", "3", *extra]
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, events


def test_kill9_mid_save_then_bit_identical_resume(tmp_path):
    # 1. uninterrupted reference run: 7 steps, checkpoints at 3, 6, 7
    ref_out = tmp_path / "ref.npz"
    proc, events = _driver(tmp_path, tmp_path / "ref", "--out", str(ref_out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert events[-1] == {"event": "done", "step": 7}

    # 2. a run killed by SIGKILL while the async save of step 6 is being written: the crash lands
    #    between complete checkpoints (3 is the last), losing steps 4-6
    run_dir = tmp_path / "run"
    proc, events = _driver(tmp_path, run_dir, "--die-mid-save", "6")
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    # the save really was cut off half-way
    assert any(p.name.startswith("6.orbax-checkpoint-tmp") for p in run_dir.iterdir())
    with CheckpointManager(run_dir) as ckpt:
        assert ckpt.latest_step() == 3 and ckpt.all_steps() == [3]

    # 3. resume from step 3 to the end: parameters bit-identical to the uninterrupted run
    out = tmp_path / "resumed.npz"
    proc, events = _driver(tmp_path, run_dir, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert events[0] == {"event": "restored", "step": 3, "data": {"next_step": 3}}
    assert [e["step"] for e in events if e["event"] == "step"] == [4, 5, 6, 7]
    ref, got = np.load(ref_out), np.load(out)
    assert sorted(ref.files) == sorted(got.files) and len(ref.files) > 5
    for k in ref.files:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
