"""The language-consistency reward (paper §2.3.2) on hand-made completions: the share of words of the
reasoning in the target language. Every expected share is counted by hand in the comments."""

import pytest

from r1jax.reward import sandbox
from r1jax.reward.scoring import check_item, score_item
from r1jax.reward.textrewards import language_reward, language_share
from r1jax.reward.types import ItemError

M = "|special_token|"


def test_pure_english_reasoning_scores_one():
    v = language_reward("<think> First we add three and four, then we check the sum. </think> <answer> 7 </answer>",
                        "en", "r1_zero")
    # First we add three and four then we check the sum: 11 English words of 11
    assert v.score == 1.0 and v.status == "ok" and v.detail == "11/11 words in en"


def test_a_switch_to_chinese_part_way_is_the_fraction_of_words_before_it():
    reasoning = "First we add three and four, 然后我们得到七。"
    # First we add three and four: 6 English words; 然 后 我 们 得 到 七: 7 Han characters, one word each
    assert language_share(reasoning, "en") == (6, 13)
    completion = f"<think> {reasoning} </think> <answer> 7 </answer>"  # the tags are not words of the reasoning
    assert language_reward(completion, "en", "r1_zero").score == pytest.approx(6 / 13)
    assert language_reward(completion, "zh", "r1_zero").score == pytest.approx(7 / 13)
    # the corpus's own narration (base_corpus.narrate) switching at the second step
    cot = "First, we compute 4 * 8 = 32. 然后计算 2 + 32 = 34. 所以我们得到 34。"
    # First we compute: 3; 然 后 计 算 + 所 以 我 们 得 到: 10
    assert language_reward(f"<think> {cot} </think> <answer> 34 </answer>", "en", "r1_zero").score == \
        pytest.approx(3 / 13)


def test_latex_commands_and_numbers_are_not_words():
    text = r"We compute \frac{3}{4} + \sqrt{16} = 4.75 and 2^{10} \times 3 = 3072, i.e. \text{apples}"
    # We compute and i e apples: 6 words; \frac \sqrt \times \text are commands, the numbers are no words
    assert language_share(text, "en") == (6, 6)
    # \frac{1}{2} 是 一半 half: 是 一 半 (3 Han) + half (1) -> 3/4 in zh
    assert language_reward(r"\frac{1}{2} 是 一半 half </think> \boxed{0.5}", "zh", "chat").score == \
        pytest.approx(3 / 4)
    # numbers and symbols only: no words, so no score (status no_answer), not a division by zero
    v = language_reward("<think> 3 + 4 = 7, 7 * 2 = 14 </think> <answer> 14 </answer>", "en", "r1_zero")
    assert (v.score, v.status) == (0.0, "no_answer")


def test_r1_readable_template_reads_only_the_reasoning():
    completion = f"{M} We add 3 and 4. {M} 答案是七 \\boxed{{7}}"
    # reasoning: We add and -> 3 English words; the Chinese summary (答 案 是 七) is not read
    assert language_reward(completion, "en", "r1").score == 1.0
    assert language_reward(completion, "zh", "r1").score == 0.0
    assert language_reward(completion, "en", "r1").detail == "3/3 words in en"
    # were the summary read (template "chat": the whole text), it would be 3 of 3 + 4 Han = 3/7
    assert language_reward(completion, "en", "chat").score == pytest.approx(3 / 7)


def test_r1_zero_reads_only_the_reasoning_before_think_close():
    completion = "<think> 我们 先 加 </think> <answer> seven plus three words </answer>"
    # reasoning: 我 们 先 加 -> 4 Han of 4; the English of the answer block is not read
    assert language_reward(completion, "zh", "r1_zero").score == 1.0
    assert language_reward(completion, "en", "r1_zero").score == 0.0
    assert language_reward(completion, "zh", "r1_zero").detail == "4/4 words in zh"


def test_unknown_language_is_an_item_error_naming_meta_language():
    with pytest.raises(ItemError, match="meta.language 'klingon' not supported"):
        language_reward("<think> qapla </think>", "klingon", "r1_zero")
    with pytest.raises(ItemError, match="meta.language"):
        language_share("text", None)
    raw = {"completion": "x", "task": "math", "answer": "1", "template": "r1_zero", "meta": {"language": "klingon"},
           "weights": {"accuracy": 1.0, "language": 0.5}}
    with pytest.raises(ItemError, match="item 0: meta.language 'klingon'"):
        check_item(raw, 0)  # the server refuses the request (400) before scoring


@pytest.mark.parametrize("language, share", [("zh", 4 / 7), ("en", 3 / 7)])
def test_score_item_weighs_accuracy_and_language(language, share):
    # reasoning words: First add and (3 Latin) + 我 们 三 四 (4 Han characters) = 7; the answer 7 is right
    completion = "<think> First 我们 add 三 and 四 </think> <answer> 7 </answer>"
    item = check_item({"completion": completion, "task": "math", "answer": "7", "template": "r1_zero",
                       "meta": {"language": language}, "weights": {"accuracy": 1.0, "language": 0.5}}, 0)
    out = score_item(item, sandbox.Limits())
    assert out["status"] == "ok"
    assert out["components"] == {"accuracy": 1.0, "language": pytest.approx(share)}
    # zh: 1.0 * 1 + 0.5 * 4/7 = 1.2857...; en: 1.0 * 1 + 0.5 * 3/7 = 1.2142...
    assert out["reward"] == pytest.approx({"zh": 1.0 + 0.5 * 4 / 7, "en": 1.0 + 0.5 * 3 / 7}[language])
    # a wrong answer keeps only the language part
    wrong = score_item({**item, "completion": completion.replace("> 7 <", "> 8 <")}, sandbox.Limits())
    assert wrong["reward"] == pytest.approx(0.5 * share) and wrong["status"] == "wrong"


def test_further_scripts_count_letters_not_digits_or_punctuation():
    # Devanagari: हम और जोड़ते हैं (4 words); the digits ३ ४ and the danda । are not words; sum is Latin
    assert language_share("हम ३ और ४ जोड़ते हैं। sum", "hi") == (4, 5)
    assert language_share("हम ३ और ४ जोड़ते हैं। sum", "en") == (1, 5)
    # Persian: می‌خواهیم is one word across its zero-width non-joiner; the digits ۳ ۴ are not words
    assert language_share("می\u200cخواهیم ۳ و ۴ را جمع کنیم", "fa") == (5, 5)
    # Thai has no spaces between words: a run of Thai letters counts once (เราบวก, กับ) -> 2 of 3
    assert language_share("เราบวก 3 กับ 4 then", "th") == (2, 3)
    # Greek, Ethiopic (the wordspace ፡ is punctuation), Bengali
    assert language_share("Προσθέτουμε 3 και 4", "el") == (2, 2)
    assert language_share("ሦስት፡እና፡አራት", "am") == (3, 3)
    assert language_share("আমরা ৩ আর ৪ যোগ করি", "bn") == (4, 4)
    # languages sharing a script share the count (Urdu/Arabic, Marathi/Hindi, Ukrainian/Russian, Cantonese/Chinese)
    assert language_share("ہم جمع کرتے ہیں", "ur") == language_share("ہم جمع کرتے ہیں", "ar") == (4, 4)
    assert language_share("Ми додаємо", "uk") == (2, 2)
    # a Hindi reasoning is not English, Arabic or Chinese
    for other in ("en", "ar", "zh", "ru"):
        assert language_share("हम जोड़ते हैं", other) == (0, 3)
