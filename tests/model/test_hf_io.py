"""HF checkpoint import/export against transformers' PyTorch models (float32).

Each architecture: a tiny random transformers model saved with save_pretrained, imported with
load_hf; logits and router choices must match the PyTorch model, export must round-trip bit-exactly
and load back into transformers, and a sharded (data=2, fsdp=2, expert=2) import must agree too.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from r1jax.model import api, hf_io  # noqa: E402
from r1jax.model.moe import route  # noqa: E402
from r1jax.parallel.mesh import MeshConfig, make_mesh  # noqa: E402

TOKENS_BT = np.array([[3, 17, 99, 42, 7, 120, 64, 5, 88, 1], [11, 2, 2, 76, 31, 9, 100, 45, 66, 12]])

HF_CONFIGS = {
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        max_position_embeddings=128),
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=False,
        max_position_embeddings=128, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "deepseek_v3": lambda: transformers.DeepseekV3Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
        routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, v_head_dim=12,
        qk_nope_head_dim=8, n_group=4, topk_group=2, num_experts_per_tok=2, first_k_dense_replace=1,
        norm_topk_prob=True, max_position_embeddings=256, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}),
}
ARCHS = tuple(HF_CONFIGS)


def _hf_model(arch):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[arch](), dtype=torch.float32).eval()
    # Larger-than-default weights so logits and router scores are far from ties; a random router
    # bias so aux-loss-free selection (bias in the choice, not in the gate value) is exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "norm" in name else 1.0 if "gate.weight" in name else 0.15)
                    + (1.0 if "norm" in name else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.1)
    return model


def _hf_run(model):
    """Logits [B, T, V] and, per MoE layer, (router input [N, d], chosen experts [N, K])."""
    routed = []

    def hook(module, args, out):
        routed.append((args[0].reshape(-1, args[0].shape[-1]).detach().numpy().copy(), out[2].numpy().copy()))

    hooks = [m.register_forward_hook(hook) for n, m in model.named_modules() if n.endswith("mlp.gate")]
    with torch.no_grad():
        logits = model(torch.tensor(TOKENS_BT)).logits.numpy()
    for h in hooks:
        h.remove()
    return logits, routed


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """arch -> (saved directory, HF logits, HF routing)."""
    out = {}
    for arch in ARCHS:
        model = _hf_model(arch)
        path = tmp_path_factory.mktemp(arch)
        model.save_pretrained(path)
        out[arch] = (str(path), *_hf_run(model))
    return out


def _positions():
    return jnp.broadcast_to(jnp.arange(TOKENS_BT.shape[1]), TOKENS_BT.shape)


@jax.jit
def _forward(graphdef, state, tokens_bt, positions_bt):
    model = nnx.merge(graphdef, state)
    hidden, _, aux = model(tokens_bt, positions_bt)
    return model.logits(hidden), aux.expert_load_le


@pytest.fixture(scope="module")
def loaded(hf_dirs):
    """arch -> (cfg, graphdef, state, logits, expert_load_le) imported on one device."""
    out = {}
    for arch in ARCHS:
        cfg, graphdef, state = hf_io.load_hf(hf_dirs[arch][0])
        logits, load = _forward(graphdef, state, jnp.asarray(TOKENS_BT), _positions())
        out[arch] = (cfg, graphdef, state, np.asarray(logits), np.asarray(load))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(arch, hf_dirs, loaded):
    ref = hf_dirs[arch][1]
    got = loaded[arch][3]
    err = np.abs(got - ref).max()
    scale = np.abs(ref).max()
    print(f"{arch}: max |logits - transformers| = {err:.3g} (max |logit| {scale:.3g})")
    assert err <= 2e-5 * scale + 1e-5, (arch, err, scale)
    assert loaded[arch][0].arch == arch


def test_router_chooses_the_same_experts(hf_dirs, loaded):
    cfg, graphdef, state, _, load_le = loaded["deepseek_v3"]
    routed = hf_dirs["deepseek_v3"][2]
    assert len(routed) == cfg.n_moe_layers == 2
    model = nnx.merge(graphdef, state)
    moe_layers = [layer.mlp for layer in model.layers if layer.is_moe]
    for row, ((x_nd, hf_idx_nk), moe) in enumerate(zip(routed, moe_layers)):
        bias_e = moe.gate.e_score_correction_bias[...]
        _, idx_nk, _ = route(jnp.asarray(x_nd), moe.gate.kernel[...], bias_e, cfg)
        np.testing.assert_array_equal(np.sort(np.asarray(idx_nk), -1), np.sort(hf_idx_nk, -1))
        # and inside the full forward: the model's observed expert load is HF's choice histogram
        counts = np.bincount(hf_idx_nk.reshape(-1), minlength=cfg.n_routed_experts)
        np.testing.assert_allclose(load_le[row], counts / counts.sum(), atol=1e-7)
    # group-limited routing really restricted the choice: every token's experts lie in <= topk_group groups
    groups = np.concatenate([r[1] for r in routed]) // (cfg.n_routed_experts // cfg.n_group)
    assert max(len(set(g)) for g in groups) <= cfg.topk_group


@pytest.mark.parametrize("arch", ARCHS)
def test_export_round_trips_and_transformers_loads_it(arch, hf_dirs, loaded, tmp_path):
    cfg, _, state, logits, _ = loaded[arch]
    hf_io.save_hf(tmp_path, cfg, state)
    original = load_file(os.path.join(hf_dirs[arch][0], "model.safetensors"))
    exported = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, value in original.items():
        assert exported[name].dtype == value.dtype and np.array_equal(exported[name], value), name
    cfg2, _, state2 = hf_io.load_hf(tmp_path)
    assert cfg2 == cfg
    for (p1, v1), (p2, v2) in zip(nnx.to_flat_state(state), nnx.to_flat_state(state2)):
        assert p1 == p2 and np.array_equal(np.asarray(v1.get_value()), np.asarray(v2.get_value())), p1
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(back(torch.tensor(TOKENS_BT)).logits.numpy(), hf_dirs[arch][1])


def test_bf16_checkpoint_and_multi_file_export(tmp_path):
    """bf16 tensors (no numpy dtype in safetensors.numpy) load bit-exactly and export in several
    files with an index json that transformers reads."""
    model = _hf_model("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src")
    cfg, _, state = hf_io.load_hf(tmp_path / "src", param_dtype="bfloat16")
    emb = dict(nnx.to_flat_state(state))[("embed_tokens", "embedding")].get_value()
    assert emb.dtype == jnp.bfloat16
    ref = model.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(emb, np.float32), ref)
    hf_io.save_hf(tmp_path / "out", cfg, state, max_shard_bytes=20_000)
    assert os.path.isfile(tmp_path / "out" / "model.safetensors.index.json")
    assert len(list((tmp_path / "out").glob("model-*-of-*.safetensors"))) > 1
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    for (name, p), (name2, p2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert name == name2 and p2.dtype == torch.bfloat16 and torch.equal(p, p2), name
    cfg32, _, state32 = hf_io.load_hf(tmp_path / "out")  # and up-cast on import by default
    emb32 = dict(nnx.to_flat_state(state32))[("embed_tokens", "embedding")].get_value()
    assert cfg32.param_dtype == "float32" and emb32.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(emb32), np.asarray(emb, np.float32))


def test_sharded_import_matches(hf_dirs, loaded):
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, expert=2, tensor=1))
    for arch in ARCHS:
        cfg, graphdef, state = hf_io.load_hf(hf_dirs[arch][0], mesh)
        shardings = dict(nnx.to_flat_state(api.state_shardings(state, mesh)))
        for path, var in nnx.to_flat_state(state):
            assert var.get_value().sharding.is_equivalent_to(shardings[path], var.ndim), path
        emb = dict(nnx.to_flat_state(state))[("embed_tokens", "embedding")].get_value()
        assert emb.addressable_shards[0].data.shape[1] == cfg.d_model // 2  # embed split over fsdp
        if cfg.is_moe:
            w = dict(nnx.to_flat_state(state))[("layers", 1, "mlp", "w_gate")].get_value()
            assert w.addressable_shards[0].data.shape[0] == cfg.n_routed_experts // 2  # experts split
        with jax.set_mesh(mesh):
            logits, load = _forward(graphdef, state, jnp.asarray(TOKENS_BT), _positions())
        ref = loaded[arch][3]
        np.testing.assert_allclose(np.asarray(logits), ref, atol=2e-5 * np.abs(ref).max())
        np.testing.assert_allclose(np.asarray(load), loaded[arch][4], atol=1e-7)


# ------------------------------------------------------------------------------- bad checkpoints


@pytest.fixture()
def qwen_copy(hf_dirs, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(hf_dirs["qwen2"][0], path)
    return path


def _edit_tensors(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_tensor_is_named_with_its_shape(qwen_copy):
    _edit_tensors(qwen_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    msg = r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight' \(expected shape \(48, 32\)\)"
    with pytest.raises(hf_io.CheckpointError, match=msg):
        hf_io.load_hf(qwen_copy)


def test_extra_tensor_is_named(qwen_copy):
    extra = {"model.layers.0.mlp.extra.weight": np.zeros((2, 2), np.float32)}
    _edit_tensors(qwen_copy, lambda t: t.update(extra))
    with pytest.raises(hf_io.CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.extra"):
        hf_io.load_hf(qwen_copy)


def test_misshaped_tensor_is_named_with_expected_shape(qwen_copy):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:8]
    _edit_tensors(qwen_copy, shrink)
    msg = r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(8, 32\), expected \(16, 32\)"
    with pytest.raises(hf_io.CheckpointError, match=msg):
        hf_io.load_hf(qwen_copy)


def test_all_problems_are_listed_at_once(qwen_copy):
    def several(t):
        t.pop("model.norm.weight")
        t["model.layers.1.self_attn.q_proj.bias"] = np.zeros((7,), np.float32)
    _edit_tensors(qwen_copy, several)
    with pytest.raises(hf_io.CheckpointError, match="2 problem") as e:
        hf_io.load_hf(qwen_copy)
    assert "model.norm.weight" in str(e.value) and "q_proj.bias" in str(e.value)


def test_tied_checkpoint_with_a_different_lm_head_is_rejected(qwen_copy):
    _edit_tensors(qwen_copy, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"] + 1}))
    with pytest.raises(hf_io.CheckpointError, match="lm_head.weight != model.embed_tokens.weight"):
        hf_io.load_hf(qwen_copy)


@pytest.mark.parametrize("changes, field", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}, "rope_type"),
    ({"quantization_config": {"quant_method": "fp8"}}, "quantization_config"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_unsupported_config_names_the_field(qwen_copy, changes, field):
    _edit_config(qwen_copy, **changes)
    with pytest.raises(ValueError, match=field):
        hf_io.load_hf(qwen_copy)


def test_unsupported_moe_config_names_the_field():
    hf = HF_CONFIGS["deepseek_v3"]().to_dict()
    with pytest.raises(ValueError, match="n_group"):
        hf_io.config_from_hf({**hf, "n_group": 3})
    with pytest.raises(ValueError, match="scoring_func"):
        hf_io.config_from_hf({**hf, "scoring_func": "softmax"})


# ------------------------------------------------------------------------------- real config.json files

# deepseek-ai/DeepSeek-V3 config.json (the fp8 release; older rope_scaling layout, no rope_interleave)
DEEPSEEK_V3_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
    "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
    "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                                            "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                                            "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}
# Qwen/Qwen2.5-0.5B-Instruct config.json
QWEN25_05B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


def test_real_configs_give_the_named_variants():
    from r1jax.model.config import get_variant

    # the FP8 release loads (dequantised at read time, tests/model/test_fp8_load.py); another method does not
    assert hf_io.fp8_block_size(DEEPSEEK_V3_CONFIG) == (128, 128)
    with pytest.raises(ValueError, match="quantization_config"):
        hf_io.config_from_hf({**DEEPSEEK_V3_CONFIG, "quantization_config": {"quant_method": "gptq", "bits": 4}})
    cfg = hf_io.config_from_hf(DEEPSEEK_V3_CONFIG, dtype="bfloat16", param_dtype="bfloat16")
    assert cfg == get_variant("deepseek_v3_671b")
    assert hf_io.config_from_hf(QWEN25_05B_CONFIG, dtype="bfloat16") == get_variant("small_dense")
    # and back: config_to_hf -> config_from_hf is the identity
    for c in (cfg, get_variant("small_dense"), get_variant("smollm2_135m"), get_variant("tiny_moe")):
        again = hf_io.config_from_hf(hf_io.config_to_hf(c), dtype=c.dtype, param_dtype=c.param_dtype)
        if c.attention == "mla":  # MLA ignores n_kv_heads; HF's DeepSeek needs num_key_value_heads = heads
            again = dataclasses.replace(again, n_kv_heads=c.n_kv_heads)
        assert again == c, c


def test_mtp_modules_round_trip_under_deepseek_names(tmp_path):
    """transformers saves no MTP weights, so the MTP mapping is checked by a round trip of a random
    r1jax model with an MTP module, against DeepSeek-V3's released tensor names."""
    from r1jax.model.config import get_variant

    cfg = get_variant("tiny_moe")
    assert cfg.n_mtp == 1
    rng = np.random.default_rng(3)  # random weights without jax's (slow, eager) random init
    random = {n: rng.normal(size=s).astype(np.float32) for n, s in hf_io.expected_tensors(cfg).items()}
    _, state = hf_io.load_source(cfg, hf_io.ArraySource(random))
    hf_io.save_hf(tmp_path, cfg, state)
    exported = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert sorted(exported) == sorted(random)
    assert all(np.array_equal(exported[n], random[n]) for n in random)
    names = set(exported)
    mtp = f"model.layers.{cfg.n_layers}"
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                 "self_attn.kv_a_proj_with_mqa.weight", "mlp.experts.7.down_proj.weight",
                 "mlp.gate.e_score_correction_bias", "mlp.shared_experts.up_proj.weight"):
        assert f"{mtp}.{name}" in names, name
    cfg2, _, state2 = hf_io.load_hf(tmp_path)
    assert cfg2.n_mtp == 1
    for (p1, v1), (p2, v2) in zip(nnx.to_flat_state(state), nnx.to_flat_state(state2)):
        assert p1 == p2 and np.array_equal(np.asarray(v1.get_value()), np.asarray(v2.get_value())), p1
    # the released checkpoint also repeats the shared embedding / head in the MTP layer: tolerated
    tensors = load_file(os.path.join(tmp_path, "model.safetensors"))
    tensors[f"{mtp}.embed_tokens.weight"] = tensors["model.embed_tokens.weight"]
    tensors[f"{mtp}.shared_head.head.weight"] = tensors["lm_head.weight"]
    save_file(tensors, os.path.join(tmp_path, "model.safetensors"), metadata={"format": "pt"})
    hf_io.load_hf(tmp_path)
