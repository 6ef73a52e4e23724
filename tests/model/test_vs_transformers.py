"""The whole forward against the transformers PyTorch models (an independent implementation), with
weights copied in memory: DeepSeek-V3 (MLA, q/kv LoRA norms, interleaved decoupled RoPE, YaRN with
mscale, sigmoid group-limited routing with a nonzero correction bias, shared experts, first-k dense)
and Llama 3 (GQA, llama3 rope scaling, attention biases, untied head). The checkpoint importer and
its parity tests live in hf_io / test_hf_io; this pins the modules' math on their own."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM

import r1jax.model as M

DS = dataclasses.replace(M.get_variant("tiny_moe"), n_mtp=0, vocab_size=128)
LLAMA = M.ModelConfig(
    arch="llama", vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=96, qkv_bias=True,
    o_bias=True, rope_theta=500000.0, rms_eps=1e-5, max_position_embeddings=256,
    rope_scaling=M.RopeScaling(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=16))


def hf_deepseek(cfg):
    rs = cfg.rope_scaling
    return DeepseekV3ForCausalLM(DeepseekV3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        moe_intermediate_size=cfg.moe_mlp_dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        n_shared_experts=cfg.n_shared_experts, n_routed_experts=cfg.n_routed_experts,
        routed_scaling_factor=cfg.routed_scaling_factor,
        kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim, qk_nope_head_dim=cfg.qk_nope_head_dim, n_group=cfg.n_group,
        topk_group=cfg.topk_group, num_experts_per_tok=cfg.n_experts_per_tok,
        first_k_dense_replace=cfg.first_k_dense, norm_topk_prob=True,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_eps,
        tie_word_embeddings=False, attention_bias=False, rope_interleave=True,
        rope_parameters={"rope_type": "yarn", "rope_theta": cfg.rope_theta, "factor": rs.factor,
                         "original_max_position_embeddings": rs.original_max_position_embeddings,
                         "beta_fast": rs.beta_fast, "beta_slow": rs.beta_slow, "mscale": rs.mscale,
                         "mscale_all_dim": rs.mscale_all_dim}))


def hf_llama(cfg):
    rs = cfg.rope_scaling
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        attention_bias=True, rms_norm_eps=cfg.rms_eps, tie_word_embeddings=False,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": rs.factor,
                         "low_freq_factor": rs.low_freq_factor, "high_freq_factor": rs.high_freq_factor,
                         "original_max_position_embeddings": rs.original_max_position_embeddings}))


def copy_weights(model, sd, cfg):
    """HF state dict -> our variables: kernels are weight.T; fused experts split into gate/up."""
    f = cfg.moe_mlp_dim

    def value(path):
        if path[0] in ("embed_tokens", "norm"):
            return sd[f"model.{path[0]}.weight"]
        if path[0] == "lm_head":
            return sd["lm_head.weight"].T
        pre, rest = f"model.layers.{path[1]}.", path[2:]
        if rest[-1] in ("w_gate", "w_up"):
            gate_up = sd[pre + "mlp.experts.gate_up_proj"]  # [E, 2F, D]
            part = gate_up[:, :f] if rest[-1] == "w_gate" else gate_up[:, f:]
            return part.transpose(0, 2, 1)
        if rest[-1] == "w_down":
            return sd[pre + "mlp.experts.down_proj"].transpose(0, 2, 1)
        name = pre + ".".join(map(str, rest[:-1]))
        if rest[-1] == "e_score_correction_bias":
            return sd[name + ".e_score_correction_bias"]
        return {"scale": lambda: sd[name + ".weight"], "kernel": lambda: sd[name + ".weight"].T,
                "bias": lambda: sd[name + ".bias"]}[rest[-1]]()

    flat = nnx.to_flat_state(nnx.state(model))
    new = []
    for path, v in flat:
        x = value(path)
        assert x.shape == v.shape, (path, x.shape, v.shape)
        new.append((path, v.replace(jnp.asarray(x, v[...].dtype))))
    assert len(new) == len(sd) + sum(1 for k in sd if "gate_up_proj" in k), "every HF tensor used once"
    nnx.update(model, nnx.from_flat_state(new))


@pytest.mark.parametrize("name", ["deepseek_v3", "llama3"])
def test_logits_and_expert_choices_match_transformers(name):
    cfg, build = (DS, hf_deepseek) if name == "deepseek_v3" else (LLAMA, hf_llama)
    torch.manual_seed(0)
    hf = build(cfg).float().eval()
    chosen = []  # HF router picks, per MoE layer
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.15)
        for layer in hf.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)  # selection-only bias in play
                layer.mlp.gate.register_forward_hook(lambda m, i, out: chosen.append(out[2].numpy()))
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    model = M.Transformer(cfg, rngs=nnx.Rngs(0))
    copy_weights(model, sd, cfg)

    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 24))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    hidden, _, aux = model(jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(24), (2, 24)))
    got = np.asarray(model.logits(hidden))
    err = np.abs(got - ref).max()
    assert err < 1e-5 * np.abs(ref).max(), (err, np.abs(ref).max())
    assert len(chosen) == cfg.n_moe_layers
    for layer, ids in enumerate(chosen):  # same experts: identical per-expert load
        counts = np.bincount(ids.reshape(-1), minlength=cfg.n_routed_experts)
        np.testing.assert_allclose(np.asarray(aux.expert_load_le[layer]), counts / counts.sum(), atol=1e-7)
