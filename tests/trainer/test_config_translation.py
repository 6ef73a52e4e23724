"""The one config translation: a loaded checkpoint's architecture is its own (a disagreeing variant or
override names its field), runtime settings apply, float metadata compares at float32 precision, and
every optional field can still be set from the command line."""

import dataclasses

import pytest
from ml_collections import ConfigDict

from r1jax.grpo.config import GRPOConfig
from r1jax.model import get_variant
from r1jax.trainer.config import ConfigError, ModelSpec, config_fields, optim_from, unused_fields
from r1jax.trainer.config import PolicySpec as Policy

TINY = get_variant("tiny_dense")


def test_variant_that_matches_the_checkpoint_takes_runtime_settings():
    loaded = dataclasses.replace(TINY, vocab_size=999, rms_eps=float.fromhex("0x1.4f8b58p-17"))  # float32 1e-5
    spec = ModelSpec(variant="tiny_dense", overrides=(("remat", True), ("rms_eps", 1e-5)), dtype="bfloat16")
    cfg = spec.apply_to(loaded, "ckpt")
    assert cfg.remat and cfg.dtype == "bfloat16" and cfg.vocab_size == 999 and cfg.param_dtype == TINY.param_dtype


@pytest.mark.parametrize("spec, field", [
    (ModelSpec(variant="tiny_dense", overrides=(("d_model", 128),)), "config.model.overrides.d_model"),
    (ModelSpec(variant="smollm2_135m"), "config.model.variant"),
    (ModelSpec(overrides=(("n_layers", 7),)), "config.model.overrides.n_layers"),
])
def test_architecture_that_disagrees_with_the_checkpoint_names_the_field(spec, field):
    with pytest.raises(ConfigError, match=field):
        spec.apply_to(TINY, "ckpt")


def test_resolve_builds_the_named_architecture_and_rejects_unknown_fields():
    cfg = ModelSpec(variant="tiny_dense", overrides=(("n_layers", 3),)).resolve()
    assert cfg.n_layers == 3 and cfg.d_model == TINY.d_model
    with pytest.raises(ConfigError, match="config.model.overrides.n_layerz"):
        ModelSpec(variant="tiny_dense", overrides=(("n_layerz", 3),)).resolve()
    with pytest.raises(ConfigError, match="config.model.variant"):
        ModelSpec(variant="huge").resolve()


def test_optional_fields_are_typed_placeholders_settable_from_the_command_line():
    c = ConfigDict({"grpo": config_fields(GRPOConfig)})
    assert c.grpo.dual_clip_c is None
    c.grpo.dual_clip_c = 3.0  # a plain None field would refuse this (ml-collections)
    assert GRPOConfig(**c.grpo.to_dict()).dual_clip_c == 3.0


def test_optim_section_may_not_set_the_schedule_length():
    with pytest.raises(ConfigError, match="config.optim.total_steps"):
        optim_from({"learning_rate": 1e-3, "total_steps": 5}, 10)
    assert optim_from({"learning_rate": 1e-3, "warmup_steps": 20}, 10).total_steps == 21


def test_unused_fields_depend_on_the_path():
    c = ConfigDict({"pretrain": {"steps": 1}, "data": {"task": "arithmetic"}, "reward": {"urls": "http://x"}})
    unused = unused_fields(c, Policy(source="workdir", path="x"))
    assert {"pretrain.", "data.path", "data.fields.", "reward.workers"} <= set(unused)
    assert "pretrain." not in unused_fields(c, Policy(source="pretrain"))
