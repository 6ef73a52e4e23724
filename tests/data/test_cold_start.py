"""Cold-start data (paper section 2.3.1): R1-Zero outputs rewritten into the readable format score format
1.0 under "r1" and keep their answer; malformed rows are skipped and counted; file errors name file:row.
The answers in the R1-Zero completions are computed here with exact rationals, independently of the
procedural generator whose gold answers the rewritten responses are graded against."""

import json
import re
from fractions import Fraction

import numpy as np
import pytest

from r1jax.data import cold_start, procedural, templates
from r1jax.data.pipeline import SFTPipelineConfig, make_sft_dataset
from r1jax.data.readers import DataError, SFTFieldMap, read_sft_file
from r1jax.data.tokenizer import SentencePieceTokenizer
from r1jax.reward import mathcheck
from r1jax.reward.mathcheck import extract_answer, verify_math
from r1jax.reward.textrewards import countdown_reward, format_reward

M = templates.SPECIAL_TOKEN


def exact_value(expression: str) -> str:
    value = eval(re.sub(r"(\d+)", r"Fraction(\1)", expression), {"Fraction": Fraction})  # our own generator text
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def r1_zero_completion(expression: str, answer: str) -> str:
    """A messy but correct R1-Zero trace: stray whitespace, a repeated line, a repeated sentence."""
    return (
        f"<think>\n  Let me compute   {expression}.  \nLet me compute {expression}.\n"
        f"Step: {expression} = {answer}.\n\n\n\nStep: {expression} = {answer}. Done.\n</think>\n"
        f"<answer> {answer} </answer>"
    )


def samples_of(task: str, n: int = 12) -> list[dict]:
    cfg = procedural.ProceduralConfig(task, n, difficulty=2)
    out = []
    for i in range(n):
        ex = procedural.generate(cfg, i)
        if task == "countdown":
            expression = answer = ex["meta"]["solution"]
        else:
            expression = ex["meta"]["expression"]
            answer = exact_value(expression)
        out.append({"question": ex["question"], "completion": r1_zero_completion(expression, answer),
                    "answer": ex["answer"], "task": ex["task"], "meta": ex["meta"]})
    return out


def test_marker_of_the_reward_is_the_template_marker():
    assert mathcheck.R1_MARKER == templates.SPECIAL_TOKEN


def test_clean_reasoning():
    assert cold_start.clean_reasoning("  a   b.\n\n\n\nc\td. ") == "a b.\n\nc d."
    # a repeated line and a repeated sentence go; a line emptied that way is not a paragraph break
    assert cold_start.clean_reasoning("x = 1.\nx = 1.\ny = 2. x = 1. z = 3.\n\nw") == "x = 1.\ny = 2. z = 3.\n\nw"
    assert cold_start.clean_reasoning("a.\n\nb.\n\na.\n\nc") == "a.\n\nb.\n\nc"
    assert cold_start.clean_reasoning("3.5 + 1 = 4.5") == "3.5 + 1 = 4.5"  # decimals are not sentence ends


def test_rewrite_of_one_trace_exactly():
    response = cold_start.readable_response(r1_zero_completion("4 + 8 * 3", "28"))
    assert response == (f"{M} Let me compute 4 + 8 * 3.\nStep: 4 + 8 * 3 = 28.\n\nDone. {M} "
                        "So the answer is \\boxed{28}.")
    assert response == templates.format_r1_response(
        "Let me compute 4 + 8 * 3.\nStep: 4 + 8 * 3 = 28.\n\nDone.", "So the answer is \\boxed{28}.")


@pytest.mark.parametrize("task", ["arithmetic", "fractions"])
def test_math_round_trip(task):
    for s in samples_of(task):
        assert verify_math(s["completion"], s["answer"], "r1_zero").score == 1.0  # a correct R1-Zero output
        response = cold_start.readable_response(s["completion"])
        assert format_reward(response, "r1").score == 1.0, response
        assert format_reward(response, "r1_zero").score == 0.0
        assert verify_math(response, s["answer"], "r1").score == 1.0, response
        original, _ = extract_answer(s["completion"], "r1_zero")
        assert verify_math(response, original, "r1").score == 1.0
        assert "<think>" not in response and "</think>" not in response and "<answer>" not in response


def test_countdown_round_trip():
    for s in samples_of("countdown"):
        assert countdown_reward(s["completion"], s["meta"], "r1_zero").score == 1.0
        response = cold_start.readable_response(s["completion"])
        assert format_reward(response, "r1").score == 1.0
        assert countdown_reward(response, s["meta"], "r1").score == 1.0, response


def test_boxed_answer_block_and_braces():
    completion = "<think> half of one </think> <answer> \\boxed{\\frac{1}{2}} </answer>"
    response = cold_start.readable_response(completion)
    assert response.endswith("So the answer is \\boxed{\\frac{1}{2}}.")
    assert verify_math(response, "0.5", "r1").score == 1.0


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("I think 28. \\boxed{28}", cold_start.NOT_R1_ZERO),
        ("<think> 28 </think> <answer> 28 </answer> and more text", cold_start.NOT_R1_ZERO),
        (f"{M} 28 {M} \\boxed{{28}}", cold_start.NOT_R1_ZERO),
        # an empty answer or reasoning breaks the R1-Zero format itself (the format reward gives it 0)
        ("<think> 28 </think> <answer>   </answer>", cold_start.NOT_R1_ZERO),
        ("<think> 28 </think> <answer> \\boxed{28} or \\boxed{29} </answer>", cold_start.NO_ANSWER),
        ("<think>   </think> <answer> 28 </answer>", cold_start.NOT_R1_ZERO),
        (f"<think> a {M} b </think> <answer> 28 </answer>", cold_start.MARKER_IN_TEXT),
        ("<think> 28 </think> <answer> 28} </answer>", cold_start.ANSWER_NOT_BOXABLE),
    ],
)
def test_unconvertible_completions(completion, reason):
    with pytest.raises(cold_start.NotConvertible) as info:
        cold_start.readable_response(completion)
    assert info.value.reason == reason


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def test_file_skips_and_counts(tmp_path):
    good = samples_of("arithmetic", 3)
    rows = [
        good[0],
        dict(good[1], completion="The answer is 5.", answer="5"),  # not R1-Zero
        "",  # blank lines are not rows
        dict(good[1], correct=False),
        {k: v for k, v in good[2].items() if k != "completion"} | {"response": good[2]["completion"]},
        dict(good[0], completion="<think> x </think> <answer> \\boxed{1} or \\boxed{2} </answer>"),
        dict(good[0], completion="<think> y </think>"),
    ]
    src = _write(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "cold.jsonl"
    stats = cold_start.build_cold_start_file(src, out)
    assert (stats.rows, stats.written) == (6, 2)
    assert stats.skipped == {cold_start.NOT_R1_ZERO: 2, cold_start.MARKED_INCORRECT: 1, cold_start.NO_ANSWER: 1}
    assert stats.skip_messages[0].startswith(f"{src}:2: not_r1_zero")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in lines] == ["samples-1", "samples-5"]  # row = line number
    assert set(lines[0]) == {"id", "question", "response", "answer", "task", "meta"}
    assert lines[1]["meta"]["source"] == f"{src}:5" and lines[1]["question"] == good[2]["question"]
    for line, s in zip(lines, (good[0], good[2])):
        assert format_reward(line["response"], "r1").score == 1.0
        assert verify_math(line["response"], s["answer"], "r1").score == 1.0


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ({"completion": "<think> a </think> <answer> 1 </answer>", "answer": "1"}, "missing field 'question'"),
        ({"question": "q", "completion": "c", "response": "r", "answer": "1"}, "expected exactly one of 'completion'"),
        ({"question": "q", "answer": "1"}, "expected exactly one of 'completion'"),
        ({"question": "q", "completion": ["c"], "answer": "1"}, "field 'completion' is list, expected text"),
        ({"question": "q", "completion": "c", "answer": " "}, "field 'answer' is empty"),
        ({"question": "q", "completion": "c", "answer": "1", "meta": [1]}, "field 'meta' is list"),
        ({"question": "q", "completion": "c", "answer": "1", "correct": "yes"}, "field 'correct' is str"),
    ],
)
def test_file_errors_name_file_and_row(tmp_path, bad_row, message):
    good = samples_of("arithmetic", 2)
    src = _write(tmp_path / "s.jsonl", [good[0], "", good[1], bad_row])
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=re.escape(f"{src}:4: {message}")) as info:
        cold_start.build_cold_start_file(src, out)
    assert (info.value.path, info.value.row) == (str(src), 4)
    assert not out.exists() and not (tmp_path / "out.jsonl.tmp").exists()  # no partial output


def test_non_utf8_row(tmp_path):
    src = _write(tmp_path / "s.jsonl", samples_of("arithmetic", 1))
    src.write_bytes(src.read_bytes() + b'{"question": "\xff"}\n')
    with pytest.raises(DataError, match=re.escape(f"{src}:2: not valid UTF-8")):
        cold_start.build_cold_start_file(src, tmp_path / "out.jsonl")


def test_output_feeds_the_sft_reader_and_pipeline(tmp_path):
    samples = samples_of("arithmetic", 6) + samples_of("countdown", 4)
    src = _write(tmp_path / "rl_samples.jsonl", samples)
    out = tmp_path / "cold_start.jsonl"
    stats = cold_start.build_cold_start_file(src, out)
    assert stats.written == 10 and not stats.skipped
    examples, read_stats = read_sft_file(out, SFTFieldMap(id="id", keep=("answer", "task")))
    assert read_stats.kept == 10
    for ex, s in zip(examples, samples):
        assert ex["question"] == s["question"] and ex["meta"]["answer"] == s["answer"]
        assert ex["response"] == cold_start.readable_response(s["completion"])
    corpus = [s["question"] for s in samples] + [templates.R1_READABLE] * 3
    tok = SentencePieceTokenizer.train(corpus, vocab_size=400)
    cfg = SFTPipelineConfig(batch_size=10, seq_len=512, template="r1", shuffle=False, pack=False)
    ds, sft_stats = make_sft_dataset(examples, tok, cfg, 0, 1)
    batch = next(iter(ds))
    assert sft_stats.skipped == sft_stats.truncated == 0
    for row, mask, ex in zip(batch.tokens_bl, batch.loss_mask_bl, examples):
        response_ids = row[mask == 1]
        assert response_ids[-1] == tok.eos_id
        assert tok.decode(response_ids[:-1]) == " " + ex["response"]
        np.testing.assert_array_equal(mask[: int(np.argmax(mask))], 0)
