"""Every shipped config variant of every stage builds its spec (the start-up checks) on the devices it
is meant for; the pod config is checked against its slice."""

import importlib.util
import os

import pytest

from r1jax.stages import eval as eval_stage
from r1jax.stages import pretrain, rl, sample, sft
from r1jax.trainer.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, variant):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


@pytest.mark.parametrize("variant, n_devices",
                         [("tiny", 1), ("tiny", 8), ("smollm2", 1), ("smollm2_cpu", 1), ("dsv3_pod", 1024)])
def test_rl_variants_pass_start_up_checks(variant, n_devices):
    rl.build(_config("r1_zero", variant), n_devices=n_devices)


def test_tiny_pretrain_builds():
    spec = pretrain.build(_config("r1_zero", "tiny"))
    assert spec.steps == 800 and spec.model.resolve().n_layers == 4


@pytest.mark.parametrize("name, variants, stage", [
    ("sft", ["tiny"], sft), ("sample", ["tiny", "cold_start"], sample),
    ("eval", ["tiny", "gsm8k", "humaneval"], eval_stage),
])
def test_stage_variants_build_once_given_a_policy(name, variants, stage):
    for variant in variants:
        c = _config(name, variant)
        c.policy.path = "runs/somewhere"
        if name == "sft":
            c.data.path = "data.jsonl"
        stage.build(c)


def test_a_stage_without_its_policy_says_which_field():
    c = _config("sft", "tiny")
    with pytest.raises(ConfigError, match="config.data.path"):
        sft.build(c)
    c.data.path = "data.jsonl"
    with pytest.raises(ConfigError, match="config.policy.path"):
        sft.build(c)


def test_pod_config_does_not_fit_a_smaller_slice_and_says_why():
    with pytest.raises(ConfigError, match="config.mesh"):
        rl.build(_config("r1_zero", "dsv3_pod"), n_devices=256)


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        _config("r1_zero", "huge")
