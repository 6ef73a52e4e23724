"""The command line as a new user meets it: help for every command lists its config fields, a bad
field is one line naming it (no traceback, non-zero exit), and every shipped config field has a doc."""

import importlib.util
import os
import subprocess
import sys

import pytest

from r1jax.main import STAGES, config_help
from r1jax.trainer.config import common_sections
from r1jax.trainer.config_docs import field_docs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _r1jax(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "r1jax.main", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("command, fields", [
    ("train", ["grpo.group_size", "rl.steps", "pretrain.steps", "policy.source"]),
    ("rl", ["grpo.loss_agg", "data.task"]),
    ("pretrain", ["pretrain.n_docs", "model.variant"]),
    ("sft", ["data.path", "sft.epochs", "data.fields.format"]),
    ("sample", ["sample.k", "sample.filters", "sample.rewrite"]),
    ("eval", ["eval.k", "eval.pass_ks", "data.task"]),
])
def test_help_exits_0_and_lists_fields_with_docs(command, fields):
    proc = _r1jax(command, "--help")
    assert proc.returncode == 0, proc.stderr
    for field in fields:
        assert f"--config.{field}=" in proc.stdout, field
    assert "G: completions sampled per prompt" in proc.stdout or command not in ("train", "rl")


@pytest.mark.parametrize("args, message", [
    (["train", "--config.grpo.group_sise=4"],
     "config.grpo.group_sise: no such field; did you mean config.grpo.group_size?"),
    (["train", "--config.rl.steps=abc"], "--config.rl.steps=abc"),
    (["train", "--config", "configs/r1_zero.py:huge"], "unknown variant 'huge'"),
    (["train", "--config.data.template=bogus"], "config.data.template: unknown template 'bogus'"),
    (["sft", "--config.policy.path=x"], "config.data.path"),
    (["train", "--bogus"], "unknown argument '--bogus'"),
    (["trian"], "did you mean 'train'?"),
    (["export", "no_such_workdir", "out"], "no_such_workdir"),
])
def test_bad_input_is_one_line_without_traceback(args, message):
    proc = _r1jax(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("r1jax")]) == 1


def test_traceback_on_request():
    proc = _r1jax("train", "--config.data.template=bogus", "--traceback")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _config(name, variant):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


@pytest.mark.parametrize("command, name, variants", [
    ("train", "r1_zero", ["tiny", "smollm2", "smollm2_cpu", "dsv3_pod"]), ("sft", "sft", ["tiny"]),
    ("sample", "sample", ["tiny", "cold_start"]), ("eval", "eval", ["tiny", "gsm8k", "humaneval"]),
])
def test_every_shipped_config_field_has_a_doc(command, name, variants):
    import importlib

    sections, docs = dict(common_sections()), {}
    for stage in STAGES[command][0]:
        module = importlib.import_module(f"r1jax.stages.{stage}")
        sections.update(module.CONFIG_SECTIONS)
        docs.update(module.FIELD_DOCS)
    for variant in variants:
        undocumented = [k for k, v in field_docs(_config(name, variant), sections, docs).items() if not v]
        assert not undocumented, f"{name}:{variant} fields without a doc: {undocumented}"
        assert "--config.seed=" in config_help(command, _config(name, variant))


def test_config_reference_in_docs_is_current():
    from r1jax.main import config_reference

    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        assert f.read() == config_reference() + "\n", "regenerate: r1jax config --reference > docs/config.md"
