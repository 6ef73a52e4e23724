"""The tiny base model's corpus: correct worked solutions, the slip and template rates asked for,
no RL prompt leaked into it, and document packing; narrated solutions and their language mixing
(the published default corpus pinned byte for byte)."""

import ast
import dataclasses
import hashlib
import math
import operator
import re

import numpy as np
import pytest

from r1jax.data import TaskSpec, base_corpus, load_splits, procedural
from r1jax.data.base_corpus import CorpusConfig, generate_corpus, narrate, worked_solution, worked_steps
from r1jax.reward.textrewards import language_share

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _reference(expr: str) -> int:
    """Independent evaluator: Python's own grammar for precedence, only + - * on integers."""

    def ev(node):
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):  # "-8 + 3" in a step
            return -ev(node.operand)
        raise ValueError(node)

    return ev(ast.parse(expr, mode="eval").body)


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_worked_solution_matches_reference_and_each_step_is_right(difficulty):
    cfg = procedural.ProceduralConfig("arithmetic", 200, difficulty)
    for i in range(200):
        ex = procedural.generate(cfg, i)
        text, answer = worked_solution(ex["meta"]["expression"])
        assert answer == _reference(ex["meta"]["expression"]) == int(ex["answer"])
        for step in text.split(". "):
            lhs, rhs = step.rstrip(".").split(" = ")
            assert _reference(lhs) == int(rhs), (ex["meta"]["expression"], step)


def test_slip_is_carried_into_later_steps():
    text, answer = worked_solution("9 - 2 * 3 + 4", slip_at=1, slip=-1)
    assert text == "2 * 3 = 6. 9 - 6 = 2. 2 + 4 = 6."
    assert answer == 6 != _reference("9 - 2 * 3 + 4")


def test_corpus_excludes_rl_questions_and_has_the_asked_rates():
    train, eval_, _ = load_splits(TaskSpec("arithmetic", n_train=300, n_eval=64, difficulty=2))
    exclude = [e["question"] for e in train + eval_]
    cfg = CorpusConfig(n_docs=3000, template_rate=0.3, error_rate=0.35, instruction_rate=0.2)
    docs = generate_corpus(cfg, exclude)
    assert len(docs) == 3000
    assert docs == generate_corpus(cfg, exclude), "the corpus must be a pure function of its seed"
    for q in exclude:
        assert not any(f"User: {q}" in d or d.startswith(f"Question: {q}\n") for d in docs)
    r1_prompt = [d for d in docs if "Assistant:" in d and "Calculate" in d.split("User:")[-1]]
    tagged = [d for d in r1_prompt if d.rstrip().endswith("</answer>") and "<think>" in d.split("Assistant:")[-1]]
    assert 0.2 < len(tagged) / len(r1_prompt) < 0.4
    # error rate: answers of full-format documents against the reference
    wrong = 0
    for d in tagged:
        expr = d.split("User: Calculate ")[1].split(". Assistant:")[0].rstrip(".")
        answer = int(d.rsplit("<answer>", 1)[1].split("</answer>")[0])
        wrong += answer != _reference(expr)
    assert 0.2 < wrong / len(tagged) < 0.5


# ------------------------------------------------------------------ narration and language mixing (§2.3.2)

def _digest(docs: list[str]) -> str:
    return hashlib.sha256("\x00".join(docs).encode()).hexdigest()


def test_default_corpus_is_byte_identical_to_the_published_one():
    """The digests were computed with the code of the published tiny R1-Zero run (commit ba12626, before
    narration existed): the defaults (narrated=False) must not move a byte of the corpus."""
    assert _digest(generate_corpus(CorpusConfig(n_docs=400))) == (
        "92232139943a8fc92bf07fb77201f19ee137f7ebc5dd72ad018dcaa481507581")
    # the tiny run's own settings (seed 1000 + config seed 0, difficulty 2), with its RL prompts excluded
    train, eval_, _ = load_splits(TaskSpec("arithmetic", n_train=300, n_eval=64, difficulty=2))
    exclude = [e["question"] for e in train + eval_]
    tiny = CorpusConfig(n_docs=300, seed=1000, difficulty=2, template_rate=0.3, error_rate=0.35)
    assert _digest(generate_corpus(tiny, exclude)) == (
        "d53e05cdaea0f613698d5abbdaccd47c6b8af33cbe264bff6b79ec9378872991")
    other = CorpusConfig(n_docs=300, seed=7, difficulty=3, template_rate=0.7, error_rate=0.5, instruction_rate=0.1,
                         drill_rate=0.1, r1_zero_prompt_rate=0.5)
    assert _digest(generate_corpus(other)) == "da7d536be7294b9d86d5f7c45ef10928728c383c0941d573d5a2bc99fab28f63"
    # the new fields at their defaults, given explicitly, are the same corpus
    assert generate_corpus(dataclasses.replace(other, narrated=False, language_mix_rate=0.0, mix_language="ru")) \
        == generate_corpus(other)


def test_narrate_writes_words_between_the_steps_and_switches_where_asked():
    steps, value = worked_steps("2 + 4 * 8")
    assert (steps, value) == (["4 * 8 = 32.", "2 + 32 = 34."], 34)
    assert narrate(steps, value) == "First, we compute 4 * 8 = 32. Then we compute 2 + 32 = 34. So we get 34."
    assert narrate(steps, value, switch_at=1) == "First, we compute 4 * 8 = 32. 然后计算 2 + 32 = 34. 所以我们得到 34。"
    assert narrate(steps, value, switch_at=2, mix_language="ru") == (
        "First, we compute 4 * 8 = 32. Then we compute 2 + 32 = 34. Итак, получаем 34.")
    assert narrate(steps, value, switch_at=0) == "首先，我们计算 4 * 8 = 32. 然后计算 2 + 32 = 34. 所以我们得到 34。"
    # English words counted by hand: First we compute / Then we compute / So we get = 9 of 9; with the
    # switch at 1: First we compute (3) of 3 + 然 后 计 算 + 所 以 我 们 得 到 (10 Han characters) = 3/13.
    assert language_share(narrate(steps, value), "en") == (9, 9)
    assert language_share(narrate(steps, value, switch_at=1), "en") == (3, 13)
    assert language_share(narrate(steps, value, switch_at=2, mix_language="ru"), "ru") == (2, 8)
    # phrase variants come from rng, the same draws whatever the languages
    a = narrate(steps, value, rng=np.random.default_rng(3))
    b = narrate(steps, value, switch_at=2, rng=np.random.default_rng(3))
    assert a.rsplit(". ", 1)[0] == b.rsplit(". ", 1)[0] and a != b
    for bad in (dict(switch_at=3), dict(switch_at=-1), dict(language="xx"), dict(mix_language="de")):
        with pytest.raises(ValueError):
            narrate(steps, value, **bad)
    with pytest.raises(ValueError):
        narrate([], 0)


@pytest.mark.parametrize("bad, field", [
    (dict(language_mix_rate=1.5), "language_mix_rate"), (dict(language_mix_rate=-0.1), "language_mix_rate"),
    (dict(narrated="yes"), "narrated"), (dict(narrated=1), "narrated"),
    (dict(narrated=True, mix_language="fr"), "mix_language"), (dict(narrated=True, mix_language="en"), "mix_language"),
    (dict(language_mix_rate=0.3), "language_mix_rate"),  # a rate without narration would do nothing
])
def test_corpus_config_rejects_bad_narration_fields(bad, field):
    with pytest.raises(ValueError, match=f"CorpusConfig.{field}"):
        CorpusConfig(**bad)


def _chains_of_thought(cfg: CorpusConfig, monkeypatch) -> tuple[list[str], list[tuple[str, str, int]]]:
    """(documents, [(expression, chain of thought, answer)] of every arithmetic document, as made)."""
    made = []
    solve = base_corpus._solve

    def spy(rng, expression, c):
        reasoning, answer = solve(rng, expression, c)
        made.append((expression, reasoning, answer))
        return reasoning, answer

    monkeypatch.setattr(base_corpus, "_solve", spy)
    return generate_corpus(cfg), made


_STEP = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)\.")


def test_language_mix_rate_is_the_share_of_mixed_chains_of_thought(monkeypatch):
    rate, cfg = 0.3, CorpusConfig(n_docs=3000, narrated=True, language_mix_rate=0.3)
    docs, made = _chains_of_thought(cfg, monkeypatch)
    n = len(made)
    assert n > 1500  # arithmetic documents: 60% of 3000
    mixed = 0
    for expression, cot, answer in made:
        hits, words = language_share(cot, "en")
        assert words > 0
        mixed += hits < words
        if hits < words:
            assert hits > 0 and language_share(cot, "zh")[0] == words - hits  # part-way: English, then Chinese
        # the narration keeps the solution: one equation per step, the (possibly slipped) result stated last
        assert len(_STEP.findall(cot)) == (len(expression.split()) - 1) // 2
        assert cot.rstrip("。.").endswith(str(answer))
    share, sd = mixed / n, math.sqrt(rate * (1 - rate) / n)
    assert abs(share - rate) < 4 * sd, (share, n)
    # the chains of thought are the documents' (those that show one), Chinese included
    shown = [cot for _, cot, _ in made if any(cot in d for d in docs[:300])]
    assert shown and any(language_share(c, "en")[0] < language_share(c, "en")[1] for c in shown)

    # rate 0: every narrated chain of thought is all English, and the rng draws are the same, so the corpus
    # is the mixed one except for the chains that switched
    docs0, made0 = _chains_of_thought(dataclasses.replace(cfg, language_mix_rate=0.0), monkeypatch)
    assert len(made0) == n
    for (_, cot0, _), (_, cot, _) in zip(made0, made):
        hits, words = language_share(cot0, "en")
        assert words > 0 and hits == words
        if language_share(cot, "en")[0] == language_share(cot, "en")[1]:
            assert cot == cot0

    # Russian as the second language
    _, made_ru = _chains_of_thought(dataclasses.replace(cfg, n_docs=300, mix_language="ru"), monkeypatch)
    assert any(language_share(cot, "ru")[0] > 0 for _, cot, _ in made_ru)
    assert not any(language_share(cot, "zh")[0] for _, cot, _ in made_ru)


def test_a_mixed_corpus_tokenizer_round_trips_chinese():
    """The pretrain stage's tokenizer (same trainer options) on a mixed corpus: the Chinese phrases of the
    corpus are pieces of their own, and any text round-trips (byte fallback), with no unknown piece."""
    import sentencepiece as spm

    from r1jax.data.tokenizer import SentencePieceTokenizer

    docs = generate_corpus(CorpusConfig(n_docs=400, narrated=True, language_mix_rate=0.5))
    assert sum("我们" in d for d in docs) > 20
    tok = SentencePieceTokenizer.train(docs, vocab_size=512, split_by_whitespace=False,
                                       split_by_unicode_script=False, max_sentencepiece_length=512)
    sp = spm.SentencePieceProcessor(model_proto=tok.model_proto)
    for text in ("First, we compute 4 * 8 = 32. 然后计算 2 + 32 = 34. 所以我们得到 34。", "首先，我们计算",
                 "Итак, получаем 7.", "鲸鱼 are not in the corpus"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text and sp.unk_id() not in ids
    pieces = [sp.id_to_piece(i) for i in tok.encode("我们得到")]
    assert not any(p.startswith("<0x") for p in pieces), pieces  # covered characters, not bytes


def test_pretrain_config_sets_the_narration_fields():
    """`pretrain.build` passes every CorpusConfig field of the pretrain section on (so a config that lists
    narrated / language_mix_rate / mix_language sets them), and a bad value is a config error naming it."""
    import importlib.util
    import os

    from r1jax.stages import pretrain
    from r1jax.trainer.config import ConfigError

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("r1_zero_config", os.path.join(root, "configs", "r1_zero.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tiny")
    assert pretrain.build(c).corpus.narrated is False  # the shipped config: the published corpus
    with c.unlocked():
        c.pretrain.narrated, c.pretrain.language_mix_rate, c.pretrain.mix_language = True, 0.3, "ru"
    corpus = pretrain.build(c).corpus
    assert (corpus.narrated, corpus.language_mix_rate, corpus.mix_language) == (True, 0.3, "ru")
    with c.unlocked():
        c.pretrain.language_mix_rate = 2.0
    with pytest.raises(ConfigError, match="pretrain.*language_mix_rate"):
        pretrain.build(c)
