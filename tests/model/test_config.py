"""Config validation names the field; the 671B variant has ~671B params and ~37B active per token
(from shapes only, nothing allocated)."""

import dataclasses

import jax
import pytest
from flax import nnx

import r1jax.model as M
from r1jax.model.config import RopeScaling


@pytest.mark.parametrize("field, value", [
    ("arch", "gpt2"),
    ("hidden_act", "gelu"),
    ("attention", "sliding"),
    ("n_kv_heads", 3),          # does not divide 4 heads
    ("dtype", "float8"),
    ("moe_impl", "scatter"),
    ("scoring_func", "softmax"),
    ("moe_layer_freq", 2),
    ("n_group", 3),             # does not divide 8 experts
    ("topk_group", 5),
    ("n_experts_per_tok", 9),
    ("kv_lora_rank", 0),
    ("qk_rope_head_dim", 7),
])
def test_unsupported_values_name_the_field(field, value):
    base = M.get_variant("tiny_moe" if field not in ("n_kv_heads",) else "tiny_dense")
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}\b"):
        dataclasses.replace(base, **{field: value})


def test_unsupported_rope_scaling_names_the_field():
    with pytest.raises(ValueError, match=r"RopeScaling\.type"):
        RopeScaling(type="dynamic")
    with pytest.raises(ValueError, match=r"ModelConfig\.rope_scaling"):
        dataclasses.replace(M.get_variant("tiny_dense"), rope_scaling={"type": "yarn"})


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(KeyError, match="tiny_dense"):
        M.get_variant("huge")


def test_variants_build_abstractly():
    for name in ("tiny_dense", "tiny_moe", "small_dense", "small_moe", "smollm2_135m"):
        _, state = M.abstract_model(M.get_variant(name))
        assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))


def test_small_dense_is_qwen2_0_5b_shaped():
    # Qwen2-0.5B: 494,032,768 parameters (tied embeddings)
    assert M.param_counts(M.get_variant("small_dense"))["total"] == 494_032_768


def test_smollm2_135m_size():
    # SmolLM2-135M: 134,515,008 parameters (tied embeddings)
    assert M.param_counts(M.get_variant("smollm2_135m"))["total"] == 134_515_008


def test_deepseek_v3_671b_counts_without_allocating():
    cfg = M.get_variant("deepseek_v3_671b")
    _, abstract = M.abstract_model(cfg)
    leaves = jax.tree.leaves(abstract)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # shapes, no buffers
    counts = M.param_counts(cfg)
    # DeepSeek-V3 report: 671B total (main model), 37B activated per token; MTP module ~11.6B own
    # parameters (the report's 14B includes the shared embedding/head)
    assert 665e9 < counts["main"] < 677e9, counts
    assert 36e9 < counts["active_per_token"] < 38.5e9, counts
    assert 10e9 < counts["mtp"] < 15e9, counts
    # the router bias is state, not a parameter
    n_bias = sum(isinstance(v, M.RouterBias) for _, v in nnx.to_flat_state(abstract))
    assert n_bias == cfg.n_moe_layers == 61 - 3 + 1
