"""Preference files (text and chat messages, JSONL and Parquet, bad rows with file:row and field) and
the miniature general-scenario preference data of the tiny pipeline."""

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1jax.data import base_corpus, general
from r1jax.data.preferences import PreferenceFieldMap, read_preference_file
from r1jax.data.readers import DataError
from r1jax.reward.mathcheck import split_completion


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _chat(*turns):
    return [{"role": role, "content": content} for role, content in turns]


PAIR = {"prompt": "Reverse the words a b", "chosen": "b a", "rejected": "a b"}


def test_text_format_default_and_mapped_columns(tmp_path):
    path = _write_jsonl(tmp_path / "prefs.jsonl", [PAIR, PAIR])
    pairs, stats = read_preference_file(path)
    assert (stats.rows, stats.kept, stats.skipped) == (2, 2, 0)
    assert pairs[0] == {"id": "prefs-1", "question": "Reverse the words a b", "chosen": "b a", "rejected": "a b",
                        "meta": {"source": f"{path}:1"}}
    rows = [{"q": "Say hi", "good": "hi", "bad": "no", "uid": "u7", "kind": "wrong_reply"}]
    path = _write_jsonl(tmp_path / "mapped.jsonl", rows)
    fields = PreferenceFieldMap(prompt="q", chosen="good", rejected="bad", id="uid", keep=("kind",))
    (pair,), _ = read_preference_file(path, fields)
    assert pair == {"id": "u7", "question": "Say hi", "chosen": "hi", "rejected": "no",
                    "meta": {"source": f"{path}:1", "kind": "wrong_reply"}}


def test_messages_format_takes_the_shared_prompt_and_the_last_assistant_messages(tmp_path):
    row = {"chosen": _chat(("system", "Be kind."), ("user", "Sort 3 1"), ("assistant", "1 3")),
           "rejected": _chat(("system", "Be kind."), ("user", "Sort 3 1"), ("assistant", "3 1")),
           "prompt": "ignored in the messages format"}
    path = _write_jsonl(tmp_path / "hh.jsonl", [row])
    (pair,), _ = read_preference_file(path, PreferenceFieldMap(format="messages"))
    assert (pair["question"], pair["chosen"], pair["rejected"]) == ("Be kind.\n\nSort 3 1", "1 3", "3 1")
    # Parquet: list<struct<role, content>> columns, and text columns
    table = pa.table({"chosen": [row["chosen"]], "rejected": [row["rejected"]]})
    pq.write_table(table, tmp_path / "uf.parquet")
    (pq_pair,), _ = read_preference_file(tmp_path / "uf.parquet", PreferenceFieldMap(format="messages"))
    assert {k: pq_pair[k] for k in ("question", "chosen", "rejected")} == \
           {k: pair[k] for k in ("question", "chosen", "rejected")}
    pq.write_table(pa.table({k: [v] for k, v in PAIR.items()}), tmp_path / "text.parquet")
    (text_pair,), _ = read_preference_file(tmp_path / "text.parquet")
    assert (text_pair["id"], text_pair["chosen"]) == ("text-1", "b a")


@pytest.mark.parametrize("row, fields, message", [
    ({"prompt": "q", "chosen": "a"}, PreferenceFieldMap(), "missing field 'rejected'"),
    ({"prompt": "q", "chosen": "a", "rejected": "  "}, PreferenceFieldMap(), "field 'rejected' is empty"),
    ({"prompt": "q", "chosen": ["a"], "rejected": "b"}, PreferenceFieldMap(), "field 'chosen' is list"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, PreferenceFieldMap(),
     "'chosen' and 'rejected' are identical"),
    ({"chosen": _chat(("user", "q1"), ("assistant", "a")), "rejected": _chat(("user", "q2"), ("assistant", "b"))},
     PreferenceFieldMap(format="messages"), "different prompts"),
    ({"chosen": _chat(("user", "q"), ("assistant", "a")), "rejected": _chat(("user", "q"))},
     PreferenceFieldMap(format="messages"), "field 'rejected' has no assistant message"),
    ({"chosen": _chat(("user", "q"), ("assistant", "")), "rejected": _chat(("user", "q"), ("assistant", "b"))},
     PreferenceFieldMap(format="messages"), "chosen[1].content"),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, PreferenceFieldMap(keep=("kind",)), "missing field 'kind'"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, row, fields, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [PAIR if fields.format == "text" else
                                                 {"chosen": _chat(("user", "q"), ("assistant", "a")),
                                                  "rejected": _chat(("user", "q"), ("assistant", "b"))}, row])
    if fields.keep:
        path = _write_jsonl(tmp_path / "bad.jsonl", [{**PAIR, "kind": "x"}, row])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)):
        read_preference_file(path, fields)
    pairs, stats = read_preference_file(path, fields, on_error="skip")
    assert (len(pairs), stats.skipped) == (1, 1) and f"{path}:2" in stats.errors[0]


# ── the miniature general scenario ─────────────────────────────────────────────────────────────────


def test_general_examples_are_the_base_corpus_instruction_tasks():
    examples = general.general_examples(50, seed=3)
    assert examples == general.general_examples(50, seed=3) and examples != general.general_examples(50, seed=4)
    rng = np.random.default_rng([3, 2304])
    for ex in examples:
        assert (ex["question"], ex["answer"]) == base_corpus._instruction(rng)
        assert ex["task"] == "exact" and ex["meta"]["scenario"] == "general"
    assert {ex["meta"]["kind"] for ex in examples} == set(general.TASK_KINDS)


def test_wrong_replies_are_never_the_correct_reply():
    rng = np.random.default_rng(0)
    kinds = []
    for ex in general.general_examples(300, seed=0):
        wrong = general.wrong_reply(ex["question"], ex["answer"], rng)
        assert wrong != ex["answer"] and wrong.strip()
        kind, bad = general.bad_reply(ex["question"], ex["answer"], rng)
        assert bad != ex["answer"] and bad.strip()
        kinds.append(kind)
    assert set(kinds) == set(general.WRONG_KINDS)


def test_helpful_pairs_differ_in_the_summary_and_harmless_pairs_by_a_rude_phrase():
    helpful = general.preference_pairs(400, seed=1, which="helpful")
    assert {p["kind"] for p in helpful} == set(general.HELPFUL_CORRUPTIONS)
    for p in helpful:
        chosen, rejected = (split_completion(p[k], "r1") for k in ("chosen", "rejected"))
        assert chosen.well_formed and f"\\boxed{{{p['answer']}}}" in chosen.final
        assert (rejected.final or "").strip() != chosen.final.strip()
        assert {"wrong_reply": rejected.well_formed, "off_topic": rejected.well_formed,
                "empty_summary": rejected.final == " ", "missing_summary": rejected.final is None}[p["kind"]]
        if p["kind"] == "off_topic":  # the reply to a task of another kind
            other = re.search(r"\\boxed\{(.*)\}", rejected.final).group(1)
            assert other != p["answer"]
    harmless = general.preference_pairs(400, seed=1, which="harmless")
    assert {p["kind"] for p in harmless} == set(general.RUDE_PLACES)
    rude = re.compile("|".join(general.RUDE_PHRASES), re.IGNORECASE)
    for p in harmless:
        assert not rude.search(p["chosen"]) and len(rude.findall(p["rejected"])) == 1
        inserted = rude.search(p["rejected"]).group(0)
        assert p["rejected"].replace(inserted[0] + inserted[1:] + "! ", "").replace(" " + inserted + "!", "") \
            == p["chosen"] or p["kind"] == "reasoning_middle"
        in_summary = rude.search(split_completion(p["rejected"], "r1").final) is not None
        assert in_summary == p["kind"].startswith("summary")
    # a share of the harmless pairs have a wrong reply on both sides: harmlessness is not correctness
    assert 0.1 < np.mean([f"\\boxed{{{p['answer']}}}" not in p["chosen"] for p in harmless]) < 0.4


def test_general_sft_rows_carry_the_noise_rates():
    rows = general.general_sft_rows(2000, seed=5, error_rate=0.2, rude_rate=0.1)
    assert abs(np.mean([r["meta"]["wrong"] for r in rows]) - 0.2) < 0.03
    assert abs(np.mean([r["meta"]["rude"] for r in rows]) - 0.1) < 0.03
    assert {r["meta"]["error"] for r in rows} == {"", *general.WRONG_KINDS}
    for r in rows[:200]:
        parts = split_completion(r["response"], "r1")
        assert parts.final is not None
        assert (f"\\boxed{{{r['answer']}}}" in parts.final) != r["meta"]["wrong"]
    assert all(r["response"] == general.general_response(r["question"], r["answer"])
               for r in rows if not r["meta"]["wrong"] and not r["meta"]["rude"])


def test_preference_files_round_trip_through_the_reader(tmp_path):
    paths = general.write_preference_files(tmp_path, n_pairs=30, seed=2)
    for which in ("helpful", "harmless"):
        pairs, stats = read_preference_file(paths[which], PreferenceFieldMap(id="id", keep=("kind",)))
        assert stats.kept == 30 and pairs[0]["id"] == "general-2-0" and "kind" in pairs[0]["meta"]
