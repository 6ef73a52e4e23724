"""Compilation is counted and cached: the smallest stage (`r1jax pretrain` of a 1-layer model for 2 steps)
run twice in fresh processes on one temporary cache directory; the first compiles and writes every
program, the second compiles nothing and loads every program from the cache."""

import json
import os
import subprocess
import sys

import pytest

from r1jax.trainer import compilation
from r1jax.trainer.compilation import CompileSpec, cache_dir_of

SMALLEST = ["--config.pretrain.steps=2", "--config.pretrain.n_docs=100", "--config.pretrain.batch_size=8",
            "--config.pretrain.seq_len=64", "--config.model.overrides.d_model=32",
            "--config.model.overrides.n_layers=1", "--config.model.overrides.mlp_dim=64",
            "--config.model.overrides.n_heads=2", "--config.model.overrides.n_kv_heads=1"]


def _pretrain(workdir, cache):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("R1JAX_COMPILE_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "r1jax.main", "pretrain", f"--workdir={workdir}", *SMALLEST,
                           f"--config.compile.cache_dir={cache}"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(workdir, "timing.json")) as f:
        return json.load(f)["compile"], proc.stdout


def test_second_run_of_the_same_config_compiles_nothing(tmp_path):
    cache = str(tmp_path / "cache")
    first, out = _pretrain(tmp_path / "a", cache)
    assert first["cache_dir"] == cache
    assert first["compiles"] >= 5 and first["compile_s"] > 0
    assert first["cache_writes"] == first["compiles"]  # every program, however small (the CPU thresholds)
    assert f"compiles: {first['compiles']} (" in out

    second, out = _pretrain(tmp_path / "b", cache)  # same config, new workdir, new process
    assert second["compiles"] == 0, second
    assert second["cache_hits"] == first["compiles"] + first["cache_hits"] and second["cache_writes"] == 0
    assert f"compiles: 0 (0.0 s), persistent cache hits: {second['cache_hits']} (" in out
    with open(tmp_path / "b" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert rows and all(r["compile/count"] == 0 and "compile/cache_hits" in r for r in rows)


def test_where_the_cache_lives(monkeypatch, tmp_path):
    for name in ("R1JAX_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir_of(CompileSpec()) == str(tmp_path / "xdg" / "r1jax" / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert cache_dir_of(CompileSpec()) == str(tmp_path / "jax")
    monkeypatch.setenv("R1JAX_COMPILE_CACHE", str(tmp_path / "env"))
    assert cache_dir_of(CompileSpec()) == str(tmp_path / "env")
    assert cache_dir_of(CompileSpec(cache_dir=str(tmp_path / "field"))) == str(tmp_path / "field")
    assert cache_dir_of(CompileSpec(cache=False)) is None
    monkeypatch.setenv("R1JAX_COMPILE_CACHE", "off")
    assert cache_dir_of(CompileSpec()) is None
    with pytest.raises(ValueError, match="min_compile_time_s"):
        CompileSpec(min_compile_time_s=-1)


def test_summary_line_reads_as_the_issue_asks():
    t = dict(compiles=41, compile_s=23.46, cache_hits=0, cache_load_s=0.0, cache_writes=41, trace_s=1.0, lower_s=0.5,
             cache_dir="/tmp/c")
    assert compilation.summary_line(t).startswith("compiles: 41 (23.5 s), persistent cache hits: 0 (")


def test_a_cache_directory_that_cannot_be_made_turns_the_cache_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="cache off"):
        assert compilation.setup(CompileSpec(cache_dir=str(blocker / "cache"))) is None
    assert compilation.totals()["cache_dir"] is None
