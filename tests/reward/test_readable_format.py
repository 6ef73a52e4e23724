"""The R1 readable format (|special_token| reasoning |special_token| summary, paper section 2.3.1) read the
same way by the format reward, the language reward, answer extraction and countdown, and once through
the real server. Expected language shares are counted by hand in the comments."""

import numpy as np
import pytest

from r1jax.reward.mathcheck import extract_answer, split_completion, verify_math
from r1jax.reward.textrewards import countdown_reward, format_reward, language_reward
from r1jax.reward.types import ItemError

M = "|special_token|"


def readable(reasoning: str, summary: str) -> str:
    return f"{M} {reasoning} {M} {summary}"


@pytest.mark.parametrize(
    "completion, ok",
    [
        (readable("3 + 4 = 7.", "So the answer is \\boxed{7}."), True),
        (f"\n  {M}\nFirst add.\n\nThen check.\n{M}\nThe sum is \\boxed{{7}}.\n", True),  # whitespace around
        (readable("no box needed for the format", "seven"), True),
        (f"{M} reasoning and a summary but one marker", False),  # second marker missing
        (f"{M} reasoning {M}   \n", False),  # empty summary
        (f"{M}   {M} summary", False),  # empty reasoning
        (f"{M} reasoning {M} summary {M} more", False),  # three markers
        (f"{M} <think> reasoning </think> {M} summary", False),  # think tags mixed in
        (f"{M} reasoning {M} summary </think>", False),
        (f"<think> reasoning </think> {M} r {M} summary", False),
        (f"{M} reasoning {M} <answer> 7 </answer>", False),
        (f"Sure! {M} reasoning {M} summary", False),  # the first marker must open the completion
        ("<think>\nreasoning\n</think>\n\nSo the answer is \\boxed{4}.", False),  # R1-Zero-style layout
        ("reasoning </think> summary", False),
        ("", False),
    ],
)
def test_r1_format(completion, ok):
    verdict = format_reward(completion, "r1")
    assert verdict.score == float(ok), verdict.detail
    assert verdict.status == ("ok" if ok else "wrong")


def test_format_notes_name_the_violation():
    assert "3 |special_token| markers" in format_reward(f"{M} a {M} b {M} c", "r1").detail
    assert "empty summary" in format_reward(f"{M} a {M} ", "r1").detail
    assert "tags mixed" in format_reward(f"{M} <think>a</think> {M} b", "r1").detail


def test_templates_do_not_accept_each_others_format():
    r1 = readable("3 + 4 = 7.", "So the answer is \\boxed{7}.")
    zero = "<think> 3 + 4 = 7. </think> <answer> 7 </answer>"
    assert format_reward(zero, "r1_zero").score == 1.0 and format_reward(r1, "r1_zero").score == 0.0
    assert format_reward(r1, "r1").score == 1.0 and format_reward(zero, "r1").score == 0.0
    assert format_reward(r1, "chat").score == 1.0  # chat asks for no structure


def test_unknown_template_is_an_error_not_a_zero():
    with pytest.raises(ItemError, match="field 'template' is 'r2'"):
        format_reward("x", "r2")
    with pytest.raises(ItemError, match="field 'template'"):
        language_reward("x", "en", "r2")


def test_split_regions():
    parts = split_completion(readable("Let me think: 2 + 2 = 4.", "So \\boxed{4}."), "r1")
    assert parts == split_completion(f"{M} Let me think: 2 + 2 = 4. {M} So \\boxed{{4}}.", "r1")
    assert parts.reasoning == "Let me think: 2 + 2 = 4."
    assert parts.final == " So \\boxed{4}." and parts.well_formed and parts.note == ""
    zero = split_completion("<think> why </think> <answer> 4 </answer>", "r1_zero")
    assert (zero.reasoning, zero.final, zero.well_formed) == ("why", " 4 ", True)
    chat = split_completion("<think> why </think> so \\boxed{4}", "chat")
    assert (chat.reasoning, chat.final) == ("why", " so \\boxed{4}")


# ------------------------------------------------------------------------------------ answer extraction


def test_r1_answer_is_the_summary_box_not_the_reasoning_box():
    completion = readable("Maybe \\boxed{5}? No: 3 + 4 = 7.", "So the answer is \\boxed{7}.")
    assert extract_answer(completion, "r1") == ("7", "boxed")
    assert verify_math(completion, "7", "r1").score == 1.0
    assert verify_math(completion, "5", "r1").score == 0.0
    # the box in the reasoning is not a hedge: only the summary's boxes count
    assert verify_math(completion, "7", "r1").status == "ok"


@pytest.mark.parametrize(
    "completion, status",
    [
        (readable("the answer is \\boxed{7}", "The answer is 7."), "no_answer"),  # no box in the summary
        (f"{M} 3 + 4 = \\boxed{{7}} and I keep thinking", "no_answer"),  # summary never started
        (readable("r", "\\boxed{7} or \\boxed{8}"), "wrong"),  # hedging in the summary
        (readable("r", "\\boxed{}"), "no_answer"),
        (readable("r", "\\boxed{7}, again \\boxed{7}"), "ok"),
        (f"{M} r {M} \\boxed{{8}} {M} \\boxed{{7}}", "wrong"),  # 3 markers: the summary runs to the end
        (f"3 + 4 = 7 {M} \\boxed{{7}}", "ok"),  # one marker after text: it closed the reasoning
        ("<think> r </think> \\boxed{7}", "ok"),  # no marker at all: read like chat
        ("<think> r \\boxed{7}", "no_answer"),
    ],
)
def test_r1_answer_rules(completion, status):
    assert verify_math(completion, "7", "r1").status == status


def test_r1_zero_and_chat_extraction_unchanged():
    assert extract_answer(" r </think> <answer> \\boxed{3} </answer>", "r1_zero") == ("3", "boxed")
    assert extract_answer(" r </think> <answer> 3 </answer>", "r1_zero") == ("3", "answer block")
    assert extract_answer(" r </think> 3", "r1_zero") == (None, "no <answer> block")
    assert extract_answer("<think> \\boxed{2} </think> \\boxed{3}", "chat") == ("3", "boxed")
    assert extract_answer("<think> \\boxed{2}", "chat") == (None, "think block never closed")
    assert extract_answer("\\boxed{3}", "chat") == ("3", "boxed")


def test_countdown_reads_the_summary():
    meta = {"numbers": [6, 2, 25], "target": 100}
    good = readable("Try \\boxed{6*25-2}: 148, too big. (6-2)*25 = 100.", "So \\boxed{(6-2)*25}.")
    assert countdown_reward(good, meta, "r1").score == 1.0
    bad = readable("(6-2)*25 = 100, so \\boxed{(6-2)*25}.", "So \\boxed{6*25-2}.")
    assert countdown_reward(bad, meta, "r1").score == 0.0
    assert countdown_reward(f"{M} \\boxed{{(6-2)*25}}", meta, "r1").status == "no_answer"


# ------------------------------------------------------------------------------------ language


def test_language_reads_only_the_reasoning():
    completion = readable("First add three and four, then check the sum.", "答案是七。\\boxed{7}")
    assert language_reward(completion, "en", "r1").score == 1.0
    # Hand count without the split: 9 English words + 4 Han characters (答 案 是 七) = 9/13.
    assert language_reward(completion, "en", "chat").score == pytest.approx(9 / 13)


def test_marker_words_are_not_counted():
    # Reasoning region: 这 是 one -> 2 Han characters of 3 words. Were "special" and "token" of the
    # two markers counted, it would be 2/5.
    v = language_reward(f"{M} 这是 one {M} summary words here", "zh", "r1")
    assert v.score == pytest.approx(2 / 3) and v.detail == "2/3 words in zh"
    # Tags are not words either: 一 二 of "<think> 一 二 </think>" -> 2/2, not 2/3 with "think".
    assert language_reward("<think> 一 二 </think> <answer> three </answer>", "zh", "r1_zero").score == 1.0


def test_language_without_reasoning_words_is_no_answer():
    v = language_reward(f"{M} 3 + 4 = 7 {M} So the answer is \\boxed{{7}}.", "en", "r1")
    assert v.status == "no_answer" and v.score == 0.0


# ------------------------------------------------------------------------------------ through the server


def test_readable_item_through_the_server(client):
    good = readable("I add three and four, which gives seven.", "答案是 \\boxed{7}.")
    mixed = readable("我 先 add three and four.", "So the answer is \\boxed{7}.")
    weights = {"accuracy": 1.0, "format": 0.5, "language": 0.25}
    items = [
        {"completion": c, "task": "math", "answer": "7", "template": "r1", "meta": {"language": "en"},
         "weights": weights}
        for c in (good, mixed, "<think> I add. </think> \\boxed{7}")
    ]
    b = client.score(items)
    assert b.status == ["ok", "ok", "ok"] and b.valid.all()
    np.testing.assert_array_equal(b.components["accuracy"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(b.components["format"], [1.0, 1.0, 0.0])
    # good: 8 English reasoning words of 8; mixed: 我 先 + 4 English words -> 4/6; think layout:
    # "I add" -> 2/2.
    np.testing.assert_allclose(b.components["language"], [1.0, 4 / 6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(b.rewards, [1.75, 1.5 + 0.25 * 4 / 6, 1.25], rtol=1e-6)


@pytest.mark.parametrize("completion, ok", [
    ("<think> 3 + 4 = 7 </think> <answer> 7 </answer>", True),
    (" 3 + 4 = 7 </think> <answer> 7 </answer>", True),  # the prompt opened <think>
    ("<think> 3 + 4 = 7 </think> <answer> </answer>", False),  # an empty answer is no answer (a found hack)
    ("<think> 3 + 4 = 7 </think> <answer></answer>", False),
    ("<think> </think> <answer> 7 </answer>", False),  # nor is an empty reasoning a reasoning
    ("</think> <answer> 7 </answer>", False),
])
def test_r1_zero_format_needs_a_reasoning_and_an_answer(completion, ok):
    from r1jax.reward.textrewards import format_reward

    assert format_reward(completion, "r1_zero").score == (1.0 if ok else 0.0)
