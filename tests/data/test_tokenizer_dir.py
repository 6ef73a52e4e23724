"""Tokenizer directories: save/load round trips, transformers loads them, atomic writes, named errors;
the SentencePiece -> tokenizers conversion behind tokenizer.json agrees with SentencePiece."""

import io
import json
import os
import random

import pytest
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from r1jax.data import procedural, templates
from r1jax.data import tokenizer as tokenizer_mod
from r1jax.data.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    save_tokenizer,
    sentencepiece_to_tokenizers,
)

TEXTS = [
    "Calculate 12 + 7 * 3.",
    "  leading and trailing spaces,\ttabs and\n\nnewlines  ",
    "Unicode: wörld, 中文, emoji 🙂, math ∑ x² {braces} \\boxed{42}",
    "",
    templates.render_prompt("r1_zero", "What is 2+3?") + " <think> 2+3=5 </think> <answer> 5 </answer>",
    templates.render_prompt("chatml", "Hi?") + "Hello.<|im_end|>",
]


def _corpus():
    questions = [procedural.generate(procedural.ProceduralConfig("arithmetic", 100, 2), i)["question"]
                 for i in range(100)]
    return questions + [templates.R1_ZERO] * 4


@pytest.fixture(scope="module")
def sp_tok():
    return SentencePieceTokenizer.train(_corpus(), vocab_size=400)


@pytest.fixture(scope="module")
def hf_tok():
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([templates.R1_ZERO, "Calculate 1 + 2 * 3."] * 10, trainer)
    return HFTokenizer(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _same(a, b):
    assert type(a) is type(b)
    assert (a.vocab_size, a.bos_id, a.eos_id, a.pad_id) == (b.vocab_size, b.bos_id, b.eos_id, b.pad_id)
    for text in TEXTS:
        ids = a.encode(text)
        assert b.encode(text) == ids, text
        assert b.decode(ids) == a.decode(ids), text
    every_id = list(range(a.vocab_size))
    assert b.decode(every_id) == a.decode(every_id)


def test_sentencepiece_round_trip(sp_tok, tmp_path):
    save_tokenizer(sp_tok, tmp_path / "tok")
    assert sorted(os.listdir(tmp_path / "tok")) == ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    back = load_tokenizer(tmp_path / "tok")
    _same(sp_tok, back)
    assert back.model_proto == sp_tok.model_proto
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"], config["unk_token"]) == (
        "<s>", "</s>", "<pad>", "<unk>")
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["r1jax"] == {"kind": "sentencepiece", "model_file": "tokenizer.model", "format": 1,
                               "vocab_size": sp_tok.vocab_size, "bos_id": 2, "eos_id": 3, "pad_id": 0,
                               "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    # an overridden pad id survives
    padded = SentencePieceTokenizer(sp_tok.model_proto, pad_id=sp_tok.eos_id)
    save_tokenizer(padded, tmp_path / "pad")
    assert load_tokenizer(tmp_path / "pad").pad_id == sp_tok.eos_id


def test_hf_round_trip(hf_tok, tmp_path):
    save_tokenizer(hf_tok, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "tokenizer_config.json"]
    back = load_tokenizer(tmp_path)
    _same(hf_tok, back)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (None, "<|im_end|>", "<|endoftext|>")
    assert config["r1jax"]["kind"] == "hf" and config["r1jax"]["bos_id"] is None
    # no pad token: pads with eos, and still after a round trip
    no_pad = HFTokenizer(hf_tok._tok, eos_token="<|im_end|>", bos_token="<|im_start|>")
    save_tokenizer(no_pad, tmp_path / "nopad")
    _same(no_pad, load_tokenizer(tmp_path / "nopad"))


def test_plain_hf_directory_loads(hf_tok, tmp_path):
    """A directory transformers wrote (no r1jax record; AddedToken dicts) loads with its named tokens."""
    hf_tok._tok.save(str(tmp_path / "tokenizer.json"))
    config = {"eos_token": {"content": "<|im_end|>", "__type": "AddedToken"}, "pad_token": "<|endoftext|>",
              "bos_token": None, "tokenizer_class": "PreTrainedTokenizerFast"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    _same(hf_tok, load_tokenizer(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: no eos_token"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("which", ["sp", "hf"])
def test_transformers_autotokenizer_encodes_like_r1jax(which, sp_tok, hf_tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = sp_tok if which == "sp" else hf_tok
    save_tokenizer(tok, tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert len(auto) == tok.vocab_size
    for text in TEXTS:
        ids = tok.encode(text)
        assert auto.encode(text, add_special_tokens=False) == ids, text
        assert auto(text)["input_ids"] == ids, text  # no BOS/EOS added, as in r1jax's encode
        assert auto.decode(ids) == tok.decode(ids), text


def test_writes_are_atomic_and_leave_no_temporaries(sp_tok, hf_tok, tmp_path, monkeypatch):
    save_tokenizer(sp_tok, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    # a failure while renaming into place: the old files stay whole, the temporary is removed
    real_replace = os.replace

    def failing_replace(src, dst):
        if dst.endswith("tokenizer.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_tokenizer(hf_tok, tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    _same(sp_tok, load_tokenizer(tmp_path))
    # saving another kind over it: one tokenizer described, no stale file of the other kind
    save_tokenizer(hf_tok, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "tokenizer_config.json"]
    _same(hf_tok, load_tokenizer(tmp_path))
    save_tokenizer(sp_tok, tmp_path, for_transformers=False)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.model", "tokenizer_config.json"]
    _same(sp_tok, load_tokenizer(tmp_path))


def test_errors_name_the_directory_or_file(sp_tok, hf_tok, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}: no tokenizer directory: tokenizer_config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(sp_tok.model_proto)
    with pytest.raises(FileNotFoundError, match=r"tokenizer files present: \['tokenizer.model'\]"):
        load_tokenizer(tmp_path)

    save_tokenizer(sp_tok, tmp_path / "sp")
    config_path = tmp_path / "sp" / "tokenizer_config.json"
    os.remove(tmp_path / "sp" / "tokenizer.model")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/sp/tokenizer.model: missing \(named by {config_path}"):
        load_tokenizer(tmp_path / "sp")
    (tmp_path / "sp" / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"sp/tokenizer.model: not a readable SentencePiece model"):
        load_tokenizer(tmp_path / "sp")
    other = SentencePieceTokenizer.train(_corpus(), vocab_size=350)  # replaced after saving
    (tmp_path / "sp" / "tokenizer.model").write_bytes(other.model_proto)
    with pytest.raises(ValueError, match=rf"{config_path}: r1jax.vocab_size={sp_tok.vocab_size}, but .* gives"):
        load_tokenizer(tmp_path / "sp")

    save_tokenizer(hf_tok, tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{")
    with pytest.raises(ValueError, match=r"hf/tokenizer.json: not a readable tokenizers file"):
        load_tokenizer(tmp_path / "hf")
    config_path = tmp_path / "hf" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "r1jax": {**config["r1jax"], "kind": "tiktoken"}}))
    with pytest.raises(ValueError, match=r"hf/tokenizer_config.json: r1jax.kind='tiktoken'"):
        load_tokenizer(tmp_path / "hf")
    config_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"hf/tokenizer_config.json: not valid JSON"):
        load_tokenizer(tmp_path / "hf")
    with pytest.raises(TypeError, match=r"cannot save a str"):
        save_tokenizer("gpt2", tmp_path / "x")


# ------------------------------------------------------------------ SentencePiece -> tokenizer.json


def _llama_like(corpus, **options):
    """SentencePiece's defaults, as Llama/Mistral models use them: dummy prefix, NFKC, extra
    whitespace removal, plus byte fallback."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=out, vocab_size=400,
                                   byte_fallback=True, hard_vocab_limit=False, minloglevel=2, **options)
    return SentencePieceTokenizer(out.getvalue())


def _random_texts(corpus, n, seed=0):
    rng = random.Random(seed)
    atoms = ["a", "the", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "1", "23", "456", "+", "*", "=", "-", ".",
             "<think>", "</think>", "<answer>", "</answer>", "|special_token|", "wörld", "中文", "🙂", "∑", "x²",
             " Calculate", "{", "}", "\\boxed{", "▁", "ｆｕｌｌ", "\u00a0", "é", "e\u0301", "<", ">", "/"]
    texts = []
    for i in range(n):
        head = rng.choice(corpus)[: rng.randint(0, 80)] if i % 2 else ""
        texts.append(head + "".join(rng.choice(atoms) for _ in range(rng.randint(1, 16))))
    return texts


@pytest.mark.parametrize("kind", ["trained", "trained_across_whitespace", "unigram", "llama_like",
                                  "llama_like_user_defined"])
def test_conversion_encodes_like_sentencepiece(kind):
    corpus = _corpus() + ["The quick brown fox jumps over the lazy dog.  Twice  spaced.\n\tTabbed"] * 5
    sp = {
        "trained": lambda: SentencePieceTokenizer.train(corpus, vocab_size=400),
        # how train.py builds the tiny base model's tokenizer (pieces may span spaces)
        "trained_across_whitespace": lambda: SentencePieceTokenizer.train(corpus, vocab_size=500,
                                                                          split_by_whitespace=False),
        "unigram": lambda: SentencePieceTokenizer.train(corpus, vocab_size=400, model_type="unigram"),
        "llama_like": lambda: _llama_like(corpus),
        # user-defined pieces after SentencePiece's dummy prefix, also at the start of a text
        "llama_like_user_defined": lambda: _llama_like(corpus, user_defined_symbols=list(tokenizer_mod.R1_TAGS)),
    }[kind]()
    converted = sentencepiece_to_tokenizers(sp.model_proto)
    mismatches = []
    for text in _random_texts(corpus, 1500) + TEXTS:
        ids = sp.encode(text)
        got = converted.encode(text, add_special_tokens=False).ids
        if got != ids or converted.decode(got, skip_special_tokens=False) != sp.decode(ids):
            mismatches.append((text, ids, got))
    assert not mismatches, (len(mismatches), mismatches[:3])


def test_unfaithful_conversion_is_refused(sp_tok, tmp_path, monkeypatch):
    """If the converted tokenizer.json disagreed with SentencePiece on a probe text, save_tokenizer
    refuses to write it (transformers would silently tokenise differently) and writes nothing."""
    other = SentencePieceTokenizer.train(_corpus(), vocab_size=350)
    monkeypatch.setattr(tokenizer_mod, "sentencepiece_to_tokenizers",
                        lambda proto: sentencepiece_to_tokenizers(other.model_proto))
    with pytest.raises(ValueError, match=rf"^{tmp_path}: the tokenizer.json converted .* for_transformers=False"):
        save_tokenizer(sp_tok, tmp_path)
    assert os.listdir(tmp_path) == []
    save_tokenizer(sp_tok, tmp_path, for_transformers=False)
    _same(sp_tok, load_tokenizer(tmp_path))


def test_conversion_rejects_what_it_cannot_convert(sp_tok):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_tok.model_proto)
    proto.trainer_spec.model_type = 3  # WORD
    with pytest.raises(ValueError, match="model_type=3 is not supported"):
        sentencepiece_to_tokenizers(proto.SerializeToString())
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        sentencepiece_to_tokenizers(b"\xff\xff garbage")
    assert tokenizer_mod.HF_TOKENIZER_FILE == "tokenizer.json"
