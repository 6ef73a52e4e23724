"""export_hf: an r1jax model + tokenizer -> one directory transformers loads (model and tokenizer),
with the same logits (float32) and the same token ids; the write is all-or-nothing."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx

from r1jax.data import procedural, templates
from r1jax.data.tokenizer import SentencePieceTokenizer, load_tokenizer
from r1jax.model import RopeScaling, create_sharded, get_variant, hf_io
from r1jax.model.export import export_hf
from r1jax.parallel.mesh import MeshConfig, make_mesh

TEXTS = [
    "Calculate 12 + 7 * 3 - 45 + 6.",
    "  two spaces,\ttabs and\n\nnewlines  ",
    "Unicode: wörld, 中文, emoji 🙂, \\boxed{42}",
    templates.render_prompt("r1_zero", "What is 2+3?") + " <think> 2+3=5 </think> <answer> 5 </answer>",
]


@pytest.fixture(scope="module")
def tok():
    corpus = [procedural.generate(procedural.ProceduralConfig("arithmetic", 100, 2), i)["question"]
              for i in range(100)]
    return SentencePieceTokenizer.train(corpus + [templates.R1_ZERO] * 4, vocab_size=400)


VARIANTS = {
    # Qwen2 layout (qkv bias, tied embeddings); a rope_theta that only counts if it is read
    "tiny_dense": lambda: dataclasses.replace(get_variant("tiny_dense"), rope_theta=1e6),
    # Llama layout (no bias, untied) with llama3 RoPE scaling
    "tiny_llama3": lambda: dataclasses.replace(
        get_variant("tiny_dense"), arch="llama", qkv_bias=False, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling=RopeScaling(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=32)),
    # DeepSeek-V3 layout: MLA, YaRN, routed + shared experts, an MTP module (transformers ignores it)
    "tiny_moe": lambda: get_variant("tiny_moe"),
    # the same with scanned layers (parameters stacked per run): the export unstacks them
    "tiny_moe_scanned": lambda: dataclasses.replace(get_variant("tiny_moe"), scan_layers=True),
}


def _model(variant: str, vocab_size: int):
    """A tiny model sharded over (data=2, fsdp=2, expert=2), so the export gathers shards. Weights
    are re-drawn larger than the init (std 0.02 would give near-zero logits that any bug matches)."""
    cfg = dataclasses.replace(VARIANTS[variant](), vocab_size=vocab_size)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, expert=2, tensor=1))
    graphdef, state = create_sharded(cfg, mesh)
    flat = nnx.to_flat_state(state)
    keys = jax.random.split(jax.random.key(1), len(flat))
    redrawn = []
    for key, (path, var) in zip(keys, flat):
        value = var.get_value()
        name = "/".join(str(p) for p in path)
        if "norm" in name or "scale" in name:
            new = 1.0 + 0.3 * jax.random.normal(key, value.shape, value.dtype)
        elif "e_score_correction_bias" in name:
            new = 0.1 * jax.random.normal(key, value.shape, value.dtype)  # exercise the router's choice bias
        else:
            new = 0.15 * jax.random.normal(key, value.shape, value.dtype)
        redrawn.append((path, var.replace(jax.device_put(new, value.sharding))))
    return cfg, mesh, graphdef, nnx.from_flat_state(redrawn)


@jax.jit
def _logits(graphdef, state, tokens_bt):
    model = nnx.merge(graphdef, state)
    positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
    hidden, _, _ = model(tokens_bt, positions_bt)
    return model.logits(hidden)


def _token_batch(tok):
    """The texts' tokens cut to the shortest one's length (>= 10), as one [B, T] batch."""
    rows = [tok.encode(t) for t in TEXTS]
    length = min(len(r) for r in rows)
    assert length >= 10
    return np.array([r[:length] for r in rows], np.int32)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_transformers_loads_the_export(variant, tok, tmp_path):
    cfg, mesh, graphdef, state = _model(variant, tok.vocab_size)
    out = tmp_path / "export"
    export_hf(out, cfg, state, tok)
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no temporary left beside it
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    assert json.loads((out / "generation_config.json").read_text()) == ids
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ids} == ids and config["vocab_size"] == tok.vocab_size

    tokens_bt = _token_batch(tok)
    with jax.set_mesh(mesh):
        ours = np.asarray(_logits(graphdef, state, jnp.asarray(tokens_bt)))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf_model(torch.tensor(tokens_bt, dtype=torch.long)).logits.numpy()
    err, scale = np.abs(ours - theirs).max(), np.abs(theirs).max()
    print(f"{variant}: max |r1jax - transformers| = {err:.3g} (max |logit| {scale:.3g})")
    assert scale > 1.0  # logits far from zero, so the comparison means something
    assert err <= 1e-4 * max(scale, 1.0), (err, scale)
    assert hf_model.generation_config.eos_token_id == tok.eos_id
    assert hf_model.generation_config.pad_token_id == tok.pad_id

    loaded = [transformers.PreTrainedTokenizerFast.from_pretrained(out)]  # tokenizer_config.json's class
    auto = transformers.AutoTokenizer.from_pretrained(out)
    if not (cfg.arch == "qwen2" and type(auto).__name__ == "Qwen2Tokenizer"):
        loaded.append(auto)
    # else: transformers 5 forces its byte-level Qwen2Tokenizer on model_type qwen2 whatever
    # tokenizer_config.json names (docs/checkpoints.md § Export); load with PreTrainedTokenizerFast.
    for hf_tok in loaded:
        for text in TEXTS:
            assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text), text
            assert hf_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text)), text
        assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.eos_id, tok.pad_id)

    # and r1jax reads it back: the same weights and the same tokenizer
    cfg2, _, state2 = hf_io.load_hf(out)
    if cfg.attention == "mla":  # MLA ignores n_kv_heads; HF's DeepSeek needs num_key_value_heads = heads
        cfg2 = dataclasses.replace(cfg2, n_kv_heads=cfg.n_kv_heads)
    if cfg.scan_layers:  # HF has one tensor per layer: it reads back unrolled, the same weights
        from r1jax.model.scan import unstack_layers

        state, cfg = unstack_layers(cfg, state), dataclasses.replace(cfg, scan_layers=False)
    assert cfg2 == cfg
    for (p1, v1), (p2, v2) in zip(nnx.to_flat_state(state), nnx.to_flat_state(state2)):
        assert p1 == p2 and np.array_equal(np.asarray(v1.get_value()), np.asarray(v2.get_value())), p1
    assert load_tokenizer(out).encode(TEXTS[3]) == tok.encode(TEXTS[3])


def test_export_is_all_or_nothing(tok, tmp_path, monkeypatch):
    cfg, _, _, state = _model("tiny_dense", tok.vocab_size)
    out = tmp_path / "export"
    export_hf(out, cfg, state, tok)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(FileExistsError, match=rf"{out}: already exists"):
        export_hf(out, cfg, state, tok)

    # a failure after the weights are written: the previous export is untouched, nothing is left over
    from r1jax.model import export as export_mod

    def broken_save_tokenizer(tokenizer, directory):
        raise OSError(f"{directory}: disk full")

    monkeypatch.setattr(export_mod, "save_tokenizer", broken_save_tokenizer)
    with pytest.raises(OSError, match="disk full"):
        export_hf(out, cfg, state, tok, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        export_hf(tmp_path / "fresh", cfg, state, tok)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before

    # overwrite replaces the whole directory (a stale file of the old export does not survive)
    (out / "stale.txt").write_text("old")
    export_hf(out, cfg, state, tok, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["export"] and not (out / "stale.txt").exists()
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_tokenizer_must_fit_the_model(tok, tmp_path):
    cfg, _, _, state = _model("tiny_dense", tok.vocab_size)
    small = dataclasses.replace(cfg, vocab_size=tok.vocab_size - 1)
    with pytest.raises(ValueError, match=rf"{tmp_path}/x: tokenizer has {tok.vocab_size} tokens but the model's "
                                         rf"vocab_size is {tok.vocab_size - 1}"):
        export_hf(tmp_path / "x", small, state, tok)
    assert os.listdir(tmp_path) == []
