"""Answer extraction in one pass (docs/reward.md § Extraction policy).

The extraction rules did not change, only their cost: each unclosed \\boxed{ used to scan to the end of the
text (and each <answer> without a close, and the r1_zero layout regex backtracked over leading whitespace),
so a few tens of KB of adversarial text burned a worker's whole deadline. Here:
  * the one-pass code gives the same answers as the old quadratic algorithms (kept below as the reference)
    on random texts made of the characters that matter;
  * adversarial megabytes through the real server are graded (no_answer / wrong / ok), not killed at the
    math deadline. How the time grows with length is measured by benchmarks/bench_extraction.py, not timed
    here.
"""

import random
import re

import pytest

from r1jax.reward.mathcheck import boxed_contents, extract_answer, split_completion

# ------------------------------------------------------------------ reference: the old algorithms


def reference_brace_group(s: str, i: int) -> tuple[str, int]:
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1 : j], j + 1
    raise ValueError("unbalanced braces")


def reference_boxed_contents(text: str) -> list[str]:
    out, end = [], 0
    for m in re.finditer(r"\\(boxed|fbox)\s*", text):
        i = m.end()
        if m.start() < end:
            continue
        if i < len(text) and text[i] == "{":
            try:
                content, after = reference_brace_group(text, i)
            except ValueError:
                continue
            out.append(content)
            end = after - 1
        elif i < len(text):
            out.append(text[i:].split()[0] if text[i:].split() else "")
    return out


REFERENCE_R1_ZERO = re.compile(
    r"\A\s*(?:<think>)?((?:(?!</?think>|</?answer>).)*)</think>\s*<answer>((?:(?!</?think>|</?answer>).)*)</answer>\s*\Z",
    re.S,
)


def reference_r1_zero_well_formed(text: str) -> bool:
    """The layout, with a reasoning and an answer that are not empty (the format rule since an empty
    <answer></answer> was found to earn full format credit)."""
    m = REFERENCE_R1_ZERO.match(text)
    return bool(m) and bool(m.group(1).strip()) and bool(m.group(2).strip())


def reference_last_answer_block(text: str) -> str | None:
    blocks = re.findall(r"<answer>(.*?)</answer>", text, re.S)
    return blocks[-1] if blocks else None


BOX_PIECES = ["\\boxed", "\\fbox", "\\boxed ", "{", "}", "{", "}", " ", "\n", "x", "1", "\\{", "\\}", "\\frac", "ab"]
TAG_PIECES = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "\t", "<answer", "think>", "\\boxed{3}"]


def random_texts(pieces, n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        yield "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))


# ------------------------------------------------------------------ same answers as before


def test_boxed_contents_matches_the_reference_on_random_texts():
    for text in random_texts(BOX_PIECES, 20_000, seed=1):
        assert boxed_contents(text) == reference_boxed_contents(text), repr(text)


@pytest.mark.parametrize(
    "text, boxes",
    [
        ("\\boxed{3}", ["3"]),
        ("\\boxed{\\frac{1}{\\boxed{2}}}", ["\\frac{1}{\\boxed{2}}"]),  # a box in a box belongs to it
        ("\\boxed{ unclosed \\boxed{3}", ["3"]),  # an unclosed box holds no answer; a closed one inside counts
        ("\\boxed{1} \\boxed{2}", ["1", "2"]),
        ("\\boxed 5 and \\fbox{6}", ["5", "6"]),
        ("\\boxed{a}}} \\boxed{b", ["a"]),
        ("}}}{{{\\boxed{7}", ["7"]),
        ("\\boxed{" * 1000 + "9" + "}", ["9"]),
        ("\\boxed", []),
        ("\\boxed \\boxed{2}", ["\\boxed{2}", "2"]),
    ],
)
def test_boxed_contents_cases(text, boxes):
    assert boxed_contents(text) == boxes == reference_boxed_contents(text)


def test_r1_zero_layout_and_answer_block_match_the_reference_on_random_texts():
    for text in random_texts(TAG_PIECES, 20_000, seed=2):
        parts = split_completion(text, "r1_zero")
        assert parts.well_formed == reference_r1_zero_well_formed(text), repr(text)
        assert parts.final == reference_last_answer_block(text), repr(text)


def test_extract_answer_on_adversarial_prefixes():
    # the answer after a megabyte of junk is still found, and junk alone is no answer
    junk = "\\boxed{" * 20_000
    assert extract_answer(junk + "</think> \\boxed{4}", "chat") == ("4", "boxed")
    assert extract_answer("</think>" + junk, "chat")[0] is None
    assert extract_answer("<think>x</think>" + "<answer>" * 20_000, "r1_zero")[0] is None
    assert extract_answer("<think>x</think><answer>" * 5_000 + "</answer>", "r1_zero")[0] is not None


# ------------------------------------------------------------------ through the server: graded, never killed

MEGABYTE = 2**20


def _repeat(piece: str, size: int = MEGABYTE) -> str:
    return piece * (size // len(piece))


ADVERSARIAL = {
    # name: (completion, template, gold, allowed statuses)
    "unclosed_boxes": ("</think> " + _repeat("\\boxed{"), "chat", "3", {"no_answer"}),
    "unclosed_boxes_then_answer": (_repeat("\\boxed{") + "</think> \\boxed{3}", "chat", "3", {"ok"}),
    "unclosed_boxes_in_summary": (
        "|special_token| r |special_token| " + _repeat("\\boxed{x"), "r1", "3", {"no_answer"}
    ),
    "bare_boxes": ("</think> " + _repeat("\\boxed "), "chat", "3", {"wrong"}),
    "open_braces_after_one_box": ("</think> \\boxed{" + _repeat("{"), "chat", "3", {"no_answer"}),
    "unclosed_answer_tags": ("r </think>" + _repeat("<answer>"), "r1_zero", "3", {"no_answer"}),
    "whitespace_r1_zero": (_repeat(" ") + "x", "r1_zero", "3", {"no_answer"}),
    "tags_r1_zero": (_repeat("<think>x"), "r1_zero", "3", {"no_answer"}),
    "long_answer_block": ("r </think> <answer>" + _repeat("1+") + "1</answer>", "r1_zero", "3", {"wrong"}),
}


@pytest.fixture(scope="module")
def adversarial_extraction_results(client):
    items = [
        {"completion": c, "task": "math", "answer": g, "template": t, "weights": {"accuracy": 1.0, "format": 0.1}}
        for c, t, g, _ in ADVERSARIAL.values()
    ]
    return client.score(items)


def test_adversarial_megabytes_are_graded_not_killed(adversarial_extraction_results):
    b = adversarial_extraction_results
    bad = [
        (name, allowed, b.status[k], b.details[k])
        for k, (name, (_, _, _, allowed)) in enumerate(ADVERSARIAL.items())
        if b.status[k] not in allowed
    ]
    assert not bad, "\n".join(map(repr, bad))
    assert b.valid.all()
