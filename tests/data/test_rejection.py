"""Rejection-sampling filters (paper section 2.3.3): hand-made samples that each filter must drop and
near misses it must keep, de-duplication, the per-prompt cap, and where a sample dropped by several
filters is counted. Language shares are counted by hand in the comments."""

import os
import subprocess
import sys

import pytest

from r1jax.data import rejection
from r1jax.data.rejection import FILTERS, RejectionConfig, select

M = "|special_token|"
FENCE = "```"


def sample(reasoning="We add three and four to get seven.", summary="So the answer is \\boxed{7}.", *,
           completion=None, prompt_id="p1", question="What is 3 + 4?", correct=True, template="r1",
           meta=None, task="math", reward=None):
    if completion is None:
        completion = f"{M} {reasoning} {M} {summary}"
    return {"prompt_id": prompt_id, "question": question, "completion": completion,
            "reward": (1.0 if correct else 0.0) if reward is None else reward, "correct": correct,
            "template": template, "meta": {} if meta is None else meta, "task": task}


def only(*filters, **kw) -> RejectionConfig:
    return RejectionConfig(filters=filters, dedupe=False, **kw)


def rejected_by(s: dict, cfg: RejectionConfig | None = None) -> str | None:
    """The filter that `select` counts the sample under, or None when it is kept."""
    kept, stats = select([s], cfg or RejectionConfig())
    assert stats.total == 1
    if kept:
        return None
    names = [name for name, n in stats.filter_drops.items() if n]
    assert len(names) == 1 and stats.kept == 0
    return names[0]


# ------------------------------------------------------------------------------------- mixed language

# Reasoning: 我 们 先 算 (4 Han characters) + then we add them (4 words) -> 4/8 English.
HALF_CHINESE = "我们先算 then we add them"
# Reasoning all English (9 words); the summary 答 案 是 (3 Han characters) would make the whole text 9/12.
ENGLISH_REASONING = "First we add three and four to get seven"
CHINESE_SUMMARY = "答案是 \\boxed{7}。"


def test_mixed_language_drops_half_chinese_reasoning():
    assert rejected_by(sample(HALF_CHINESE)) == "mixed_language"
    assert FILTERS["mixed_language"](sample(HALF_CHINESE), RejectionConfig()) == "4/8 reasoning words in en < 0.9"


def test_mixed_language_reads_only_the_reasoning():
    assert rejected_by(sample(ENGLISH_REASONING, CHINESE_SUMMARY)) is None
    # The same text as chat (no markers, no think block: all of it is reasoning) is 9/12 English.
    as_chat = sample(completion=f"{ENGLISH_REASONING} {CHINESE_SUMMARY}", template="chat")
    assert FILTERS["mixed_language"](as_chat, RejectionConfig()) == "9/12 reasoning words in en < 0.9"
    # Marker words are not counted: with "special" and "token" the half-Chinese reasoning would be 8/12.
    assert FILTERS["mixed_language"](sample(HALF_CHINESE), RejectionConfig()).startswith("4/8")


def test_mixed_language_threshold_target_and_templates():
    assert rejected_by(sample(HALF_CHINESE), only("mixed_language", min_language_share=0.5)) is None  # 4/8 = 0.5
    assert rejected_by(sample(HALF_CHINESE), only("mixed_language", min_language_share=0.51)) == "mixed_language"
    assert rejected_by(sample("我们先算三加四", meta={"language": "zh"})) is None  # 7/7 Chinese
    assert rejected_by(sample("我们先算三加四")) == "mixed_language"  # target defaults to English
    assert rejected_by(sample("3 + 4 = 7", "\\boxed{7}")) is None  # no words: nothing is mixed
    zero = f"<think> {HALF_CHINESE} </think> <answer> 7 </answer>"
    assert rejected_by(sample(completion=zero, template="r1_zero")) == "mixed_language"
    zero_ok = f"<think> {ENGLISH_REASONING} </think> <answer> 七 </answer>"
    assert rejected_by(sample(completion=zero_ok, template="r1_zero")) is None


def test_unsupported_language_is_an_error():
    with pytest.raises(ValueError, match=r"samples\[1\]: meta.language 'xx' not supported"):
        select([sample(), sample(meta={"language": "xx"})])


# ------------------------------------------------------------------------------------- long paragraphs


def test_long_paragraph():
    long_para = ("abcd " * 400).strip()  # one paragraph of 1,999 characters
    assert len(long_para) == 1999
    assert rejected_by(sample(long_para)) == "long_paragraph"
    short_paras = "\n\n".join(["x" * 450] * 5)  # 2,258 characters in five paragraphs
    assert rejected_by(sample(short_paras)) is None
    single_newlines = "\n".join(["x" * 450] * 5)  # a line break does not end a paragraph
    assert rejected_by(sample(single_newlines)) == "long_paragraph"
    # the markers end paragraphs: 900 + 200 characters on one line are two paragraphs
    assert rejected_by(sample("r" * 900, "s" * 200)) is None
    assert rejected_by(sample(long_para), only("long_paragraph", max_paragraph_chars=2000)) is None
    assert FILTERS["long_paragraph"](sample(long_para), RejectionConfig()) == "a paragraph of 1999 characters > 1000"


# ------------------------------------------------------------------------------------- code blocks

FENCED = f"Compute it:\n{FENCE}python\nprint(3 + 4)\n{FENCE}\nIt prints 7."
INDENTED = "Compute it:\n\n    x = 3 + 4\n    print(x)\n\nIt prints 7."


def test_code_blocks_in_math_are_dropped():
    assert rejected_by(sample(FENCED)) == "code_block"
    assert rejected_by(sample(INDENTED)) == "code_block"
    assert rejected_by(sample("Compute it:\n~~~\nprint(7)\n~~~")) == "code_block"
    assert rejected_by(sample("So the answer is 7.", f"{FENCE}\n7\n{FENCE}")) == "code_block"  # in the summary
    assert FILTERS["code_block"](sample(INDENTED), RejectionConfig()) == "indented code block"


def test_code_blocks_kept_for_code_tasks_or_when_allowed():
    assert rejected_by(sample(FENCED, task="code")) is None
    assert rejected_by(sample(INDENTED, task="code")) is None
    assert rejected_by(sample(FENCED), RejectionConfig(allow_code_blocks=True)) is None


def test_near_misses_are_not_code():
    assert rejected_by(sample("One indented line:\n\n    3 + 4 = 7\n\ndone.")) is None
    assert rejected_by(sample("Steps:\n    - add 3 and 4\n    - check: 7")) is None  # nested list items
    assert rejected_by(sample("Inline `3 + 4` is fine.")) is None


# ------------------------------------------------------------------------------------- counting rules


def test_first_rejecting_filter_gets_the_count():
    both = sample(HALF_CHINESE + "\n" + FENCED)  # mixed language and a code block
    _, stats = select([both])
    assert stats.filter_drops == {"mixed_language": 1, "long_paragraph": 0, "code_block": 0}
    _, stats = select([both], RejectionConfig(filters=("code_block", "mixed_language")))
    assert stats.filter_drops == {"code_block": 1, "mixed_language": 0}
    # a configuration picks filters by name; the ones not named never run
    assert rejected_by(both, only("long_paragraph")) is None


def test_incorrect_dropped_first_unless_kept():
    bad = sample(correct=False)
    mixed_bad = sample(HALF_CHINESE, correct=False)
    kept, stats = select([bad, mixed_bad])
    assert kept == [] and (stats.correct, stats.incorrect_dropped, sum(stats.filter_drops.values())) == (0, 2, 0)
    kept, stats = select([bad, mixed_bad], RejectionConfig(keep_incorrect=True))
    assert kept == [bad] and stats.incorrect_dropped == 0 and stats.filter_drops["mixed_language"] == 1


def test_dedupe():
    a = sample("We add three and four.")
    a_again = sample("We  add three\nand four.  ")  # same text up to whitespace
    other_question = sample("We add three and four.", question="What is 4 + 3?", prompt_id="p2")
    kept, stats = select([a, a_again, other_question])
    assert kept == [a, other_question] and stats.duplicate_drops == 1
    kept, stats = select([a, a_again, other_question], RejectionConfig(dedupe=False))
    assert len(kept) == 3 and stats.duplicate_drops == 0


def test_cap_per_prompt():
    p1 = [sample(f"Try number {k}: three plus four is seven.", prompt_id="p1") for k in range(5)]
    p2 = [sample(f"Way {k}: four plus three is seven.", prompt_id="p2", question="Q2") for k in range(2)]
    samples = [p1[0], p2[0], p1[1], p1[2], p2[1], p1[3], p1[4]]
    kept, stats = select(samples, RejectionConfig(max_per_prompt=2))
    assert kept == [p1[0], p2[0], p1[1], p2[1]]  # the first ones of each prompt, input order
    assert (stats.cap_drops, stats.kept, stats.prompts, stats.prompts_kept) == (3, 4, 2, 2)


def test_stats_of_a_mixed_batch():
    samples = [
        sample(prompt_id="a"),                                  # kept
        sample(prompt_id="a"),                                  # duplicate of the first
        sample(HALF_CHINESE, prompt_id="a"),                    # mixed language
        sample(("abcd " * 400).strip(), prompt_id="b"),         # long paragraph
        sample(FENCED, prompt_id="b"),                          # code block
        sample(prompt_id="c", question="Q3", correct=False),    # incorrect
        sample("Another way: four plus three.", prompt_id="d", question="Q4"),  # kept
    ]
    kept, stats = select(samples)
    assert kept == [samples[0], samples[6]]
    assert stats == rejection.RejectionStats(
        total=7, correct=6, incorrect_dropped=1,
        filter_drops={"mixed_language": 1, "long_paragraph": 1, "code_block": 1},
        duplicate_drops=1, cap_drops=0, kept=2, prompts=4, prompts_kept=2,
    )


# ------------------------------------------------------------------------------------- config and input errors


def test_config_errors():
    with pytest.raises(ValueError, match=r"RejectionConfig.filters: unknown filter 'typos'; choose from "
                                         r"\['code_block', 'long_paragraph', 'mixed_language'\]"):
        RejectionConfig(filters=("mixed_language", "typos"))
    with pytest.raises(ValueError, match="RejectionConfig.filters must be a tuple"):
        RejectionConfig(filters="code_block")
    with pytest.raises(ValueError, match="names a filter twice"):
        RejectionConfig(filters=("code_block", "code_block"))
    with pytest.raises(ValueError, match="min_language_share"):
        RejectionConfig(min_language_share=1.5)
    with pytest.raises(ValueError, match="max_per_prompt"):
        RejectionConfig(max_per_prompt=0)
    with pytest.raises(ValueError, match="max_paragraph_chars"):
        RejectionConfig(max_paragraph_chars=0)
    assert RejectionConfig(filters=["code_block"]).filters == ("code_block",)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"completion": None}, r"samples\[1\]: field 'completion' must be a string"),
        ({"prompt_id": 3}, r"samples\[1\]: field 'prompt_id' must be a string"),
        ({"correct": 1}, r"samples\[1\]: field 'correct' must be true or false"),
        ({"reward": "1"}, r"samples\[1\]: field 'reward' must be a number"),
        ({"template": "chatml"}, r"samples\[1\]: field 'template' is 'chatml'"),
        ({"meta": None}, r"samples\[1\]: field 'meta' must be a dict"),
    ],
)
def test_malformed_samples_name_index_and_field(change, message):
    with pytest.raises(ValueError, match=message):
        select([sample(), {**sample(), **change}])


def test_module_does_not_import_jax():
    path = os.path.join(os.path.dirname(rejection.__file__), "rejection.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('rejection_alone', {path!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        "kept, stats = module.select([])\n"
        "assert not [m for m in sys.modules if m == 'jax' or m.startswith('jax.')], 'jax imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
