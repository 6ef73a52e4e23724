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


POD_VARIANTS = {"dsv3_pod": (1024, "deepseek_v3_671b"), "v2lite_pod": (64, "v2_lite_moe")}


def _pod_config(variant):
    c = _config("r1_zero", variant)
    c.policy.path, c.data.path = "/ckpt/model", "/data/prompts.jsonl"
    return c


@pytest.mark.parametrize("variant, n_devices",
                         [("tiny", 1), ("tiny", 8), ("smollm2", 1), ("smollm2_cpu", 1), ("dsv3_pod", 1024),
                          ("v2lite_pod", 64)])
def test_rl_variants_pass_start_up_checks(variant, n_devices):
    c = _pod_config(variant) if variant in POD_VARIANTS else _config("r1_zero", variant)
    rl.build(c, n_devices=n_devices)


@pytest.mark.parametrize("variant", sorted(POD_VARIANTS))
def test_pod_configs_resolve_to_the_policy_the_run_loads(variant):
    """The architecture, dtype policy and memory settings that load_policy would give an HF checkpoint of
    the variant (what launch/aot_compile.py compiles): float32 master weights, bfloat16 compute, scanned
    and rematerialised layers, all-to-all expert dispatch, blockwise training attention, no MTP."""
    from r1jax.model.config import get_variant
    from r1jax.trainer.policy import planned_config

    n_devices, name = POD_VARIANTS[variant]
    spec = rl.build(_pod_config(variant), n_devices=n_devices)
    cfg = planned_config(spec.policy, spec.model)
    assert (cfg.param_dtype, cfg.dtype) == ("float32", "bfloat16")
    assert cfg.scan_layers and cfg.remat and cfg.moe_dispatch == "all_to_all" and cfg.train_attention_block > 0
    assert cfg.n_mtp == 0 and cfg.d_model == get_variant(name).d_model
    assert spec.rollout.max_prompt_len == 1024 and spec.grpo.group_size == 16
    keep = _pod_config(variant)
    keep.model.keep_mtp = True
    kept = rl.build(keep, n_devices=n_devices)
    assert planned_config(kept.policy, kept.model).n_mtp == get_variant(name).n_mtp


@pytest.mark.parametrize("variant", sorted(POD_VARIANTS))
def test_pod_config_without_its_paths_names_the_field(variant):
    n_devices = POD_VARIANTS[variant][0]
    c = _pod_config(variant)
    c.data.path = ""
    with pytest.raises(ConfigError, match="config.data.path"):
        rl.build(c, n_devices=n_devices)
    c = _pod_config(variant)
    c.policy.path = ""
    with pytest.raises(ConfigError, match="config.policy.path"):
        rl.build(c, n_devices=n_devices)


def test_v2_lite_variant_has_its_published_size():
    from r1jax.model import param_counts
    from r1jax.model.config import get_variant

    counts = param_counts(get_variant("v2_lite_moe"))
    assert 15.5e9 < counts["total"] < 15.9e9, counts  # DeepSeek-V2-Lite: 15.7B
    assert 2.3e9 < counts["active_per_token"] < 2.8e9, counts  # 2.4B (+ the output head counted here)


def test_drop_mtp_removes_the_modules_unless_kept():
    """No stage has an MTP loss: a loaded policy's MTP parameters (and so their Adam state) are dropped,
    the main model's output unchanged; model.keep_mtp keeps them."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from r1jax.model import api
    from r1jax.model.config import get_variant
    from r1jax.parallel.mesh import MeshConfig, make_mesh
    from r1jax.trainer.config import ModelSpec
    from r1jax.trainer.policy import Policy, drop_mtp
    from r1jax.trainer.state import split_model_state

    cfg = get_variant("tiny_moe")
    graphdef, state = api.create_sharded(cfg, make_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1]))
    policy = Policy(cfg, graphdef, *split_model_state(state), tokenizer=None, origin="test")
    assert drop_mtp(policy, ModelSpec(keep_mtp=True)) is policy
    dropped = drop_mtp(policy, ModelSpec())
    assert cfg.n_mtp == 1 and dropped.model_cfg == dataclasses.replace(cfg, n_mtp=0)
    for tree in (dropped.params, dropped.model_state):
        assert not [p for p, _ in nnx.to_flat_state(tree) if p[0] == "mtp"]
    assert any(p[0] == "mtp" for p, _ in nnx.to_flat_state(policy.params))
    tokens = jnp.asarray(np.arange(12).reshape(2, 6) % cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
    outs = [nnx.merge(p.graphdef, p.params, p.model_state)(tokens, positions)[0] for p in (policy, dropped)]
    np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(outs[1]))


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
        rl.build(_pod_config("dsv3_pod"), n_devices=256)


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        _config("r1_zero", "huge")


@pytest.mark.parametrize("field, value", [("max_staleness", 1), ("sampler_devices", 4)])
def test_single_process_rl_options_are_refused_for_several_processes(field, value):
    """Asynchronous rollout and a sampler on its own devices work in one process and fail at start-up,
    naming the field, in a multi-process job (they would desynchronise or strand the other processes)."""
    c = _config("r1_zero", "tiny")
    c.rl[field] = value
    rl.build(c, n_devices=8, n_processes=1)
    with pytest.raises(ConfigError, match=f"config.rl.{field}.*single-process"):
        rl.build(c, n_devices=8, n_processes=2)
