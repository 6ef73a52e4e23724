"""Readers: field maps, answer extraction, and bad input reported with file and row."""

import gzip
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1jax.data import readers
from r1jax.data.readers import DataError, FieldMap


def _write_lines(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = json.dumps({"question": "What is 1+1?", "answer": "2"}).encode()


def test_jsonl_field_map_and_formats(tmp_path):
    rows = [
        {"problem": "Natalia sold 48 clips...", "solution": "She sold 24 more.\n#### 1,072", "uid": "a"},
        {"problem": "Q2", "solution": "So it is 5 + 2 = <<5+2=7>>7.\n#### 7", "uid": "b"},
    ]
    path = _write_lines(tmp_path / "gsm.jsonl", [json.dumps(r).encode() for r in rows])
    fields = FieldMap(question="problem", answer="solution", id="uid", answer_format="gsm8k")
    examples, stats = readers.read_file(path, fields)
    assert [e["answer"] for e in examples] == ["1072", "7"]
    assert examples[0]["id"] == "a" and examples[0]["task"] == "math"
    assert examples[1]["meta"] == {"source": f"{path}:2", "solution": rows[1]["solution"]}
    assert (stats.rows, stats.kept, stats.skipped) == (2, 2, 0)

    math_row = {"problem": "p", "solution": r"so \boxed{\frac{1}{2}} then \boxed{\frac{\sqrt{3}}{2}}."}
    path = _write_lines(tmp_path / "math.jsonl.gz", [])
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(math_row) + "\n")
    fields = FieldMap(question="problem", answer="solution", answer_format="boxed")
    examples, _ = readers.read_file(path, fields)
    assert examples[0]["answer"] == r"\frac{\sqrt{3}}{2}" and examples[0]["id"] == "math.jsonl-1"


def test_code_rows_keep_tests_in_meta(tmp_path):
    row = {"prompt": "def f(x):\n", "test": "assert f(1) == 2", "entry_point": "f"}
    path = _write_lines(tmp_path / "code.jsonl", [json.dumps(row).encode()])
    fields = FieldMap(question="prompt", answer=None, tests="test", entry_point="entry_point", task="code")
    (ex,), _ = readers.read_file(path, fields)
    assert ex["answer"] is None and ex["task"] == "code"
    assert ex["meta"]["tests"] == {"type": "assert", "program": row["test"]} and ex["meta"]["entry_point"] == "f"
    assert "assert" not in ex["question"]
    with pytest.raises(ValueError, match="needs the tests column"):
        FieldMap(task="code", answer=None)


BAD_CASES = [
    (b'{"question": "Q", "answer": ', "malformed JSON"),
    (b'{"question": "Q"}', "missing field 'answer'"),
    ('{"question": "caf\u00e9", "answer": "1"}'.encode("latin-1"), "not valid UTF-8"),
    (json.dumps({"question": "x" * 101, "answer": "1"}).encode(), "101 characters, over max_chars=100"),
    (b'{"question": "", "answer": "1"}', "field 'question' is empty"),
    (b'["question", "answer"]', "expected a JSON object"),
    (b'{"question": ["Q"], "answer": "1"}', "field 'question' is list"),
]


@pytest.mark.parametrize("bad,reason", BAD_CASES)
def test_bad_row_fails_with_file_and_row(tmp_path, bad, reason):
    path = _write_lines(tmp_path / "data.jsonl", [GOOD, b"", GOOD, bad, GOOD])
    with pytest.raises(DataError, match=f"^{tmp_path}/data.jsonl:4: .*{reason}") as info:
        readers.read_jsonl(path, max_chars=100)
    assert (info.value.path, info.value.row) == (str(path), 4)


def test_skip_counts_and_logs(tmp_path, caplog):
    path = _write_lines(tmp_path / "data.jsonl", [GOOD] + [bad for bad, _ in BAD_CASES] + [GOOD])
    with caplog.at_level(logging.WARNING, logger="r1jax.data.readers"):
        examples, stats = readers.read_jsonl(path, on_error="skip", max_chars=100)
    assert len(examples) == 2 and (stats.rows, stats.kept, stats.skipped) == (9, 2, 7)
    assert [e.split(": ")[0] for e in stats.errors] == [f"{path}:{r}" for r in range(2, 9)]
    assert sum("skipping bad row" in r.message for r in caplog.records) == 7
    with pytest.raises(ValueError, match="on_error='ignore'"):
        readers.read_jsonl(path, on_error="ignore")


def test_parquet(tmp_path):
    table = pa.table({"Problem": ["p1", "p2", None], "Answer": [204, 33, 5], "Year": [2024, 2024, 2025]})
    path = tmp_path / "aime.parquet"
    pq.write_table(table, path)
    fields = FieldMap(question="Problem", answer="Answer", keep=("Year",))
    with pytest.raises(DataError, match="aime.parquet:3: field 'Problem' is NoneType"):
        readers.read_parquet(path, fields)
    examples, stats = readers.read_parquet(path, fields, on_error="skip")
    assert [(e["question"], e["answer"], e["meta"]["Year"]) for e in examples] == [("p1", "204", 2024),
                                                                                   ("p2", "33", 2024)]
    assert stats.skipped == 1
    with pytest.raises(DataError, match=r"aime.parquet:0: columns \['question'\] not in file"):
        readers.read_parquet(path, FieldMap(answer="Answer"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="broken.parquet: not a readable Parquet file"):
        readers.read_parquet(tmp_path / "broken.parquet")
    with pytest.raises(ValueError, match="unknown file type"):
        readers.read_file(tmp_path / "x.csv")


def test_humaneval_bundled():
    problems = readers.humaneval()
    assert len(problems) == 164 and len({p["id"] for p in problems}) == 164
    for p in problems:
        assert p["task"] == "code" and "def check(candidate)" in p["meta"]["tests"]["program"]
        assert f"def {p['meta']['entry_point']}" in p["question"]
        assert "def check(candidate)" not in p["question"]
    # The bundled canonical solutions pass their own tests (trusted package data; a few suffice).
    for p in problems[:5]:
        scope = {}
        exec(p["question"] + p["meta"]["canonical_solution"] + "\n" + p["meta"]["tests"]["program"], scope)
        scope["check"](scope[p["meta"]["entry_point"]])


def test_gsm8k_test100():
    problems = readers.gsm8k_test100()
    assert len(problems) == 100 and len({p["id"] for p in problems}) == 100
    for p in problems:
        # The answer is the number on the worked solution's final '#### N' line.
        last = p["meta"]["solution"].strip().splitlines()[-1]
        assert last.startswith("####") and float(last[4:].replace(",", "")) == float(p["answer"])
        assert "####" not in p["question"]
    first = next(p for p in problems if p["meta"]["gsm8k_test_index"] == 473)
    assert first["answer"] == "10" and first["question"].startswith("Benny saw a 10-foot shark")
