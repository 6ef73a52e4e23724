"""Cold-start SFT data (paper section 2.3.1) in miniature: correct R1-Zero outputs rewritten by rule into
the readable format.

The paper gathers "DeepSeek-R1-Zero outputs in a readable format" and post-processes them (by human
annotators) into `|special_token| <reasoning_process> |special_token| <summary>`. Here the
post-processing is a fixed rule, enough for the short arithmetic-style traces of our tiny RL policy:

  <think> reasoning </think> <answer> X </answer>
    -> |special_token| cleaned reasoning |special_token| So the answer is \\boxed{X}.

Cleaning (`clean_reasoning`): whitespace is normalised (runs of spaces -> one, at most one blank line
between paragraphs) and a sentence that already appeared earlier in the reasoning is dropped (a line
whose sentences all repeat disappears), since looping repetition is the commonest unreadable trait of
small RL policies. X is the R1-Zero answer (the boxed content when the answer block has a box).

Only correct outputs are supposed to come in (filter with `r1jax.data.rejection.select` first); the
rewrite checks the layout, not the answer. A sample that cannot be rewritten (not the R1-Zero layout,
no answer, nothing left of the reasoning, marked `"correct": false`) is skipped and counted by reason;
a malformed row (bad JSON, a missing or non-text field) raises `DataError` naming file and row.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from pathlib import Path

from r1jax.data.readers import DataError
from r1jax.data.templates import SPECIAL_TOKEN, format_r1_response
from r1jax.reward.mathcheck import extract_answer, split_completion

# The rewrite is kept only when the reward reads back exactly the answer that went in; this is the
# sentinel `extract_answer` returns for several different boxed answers.
_HEDGE = "\\HEDGE"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MAX_LOGGED_SKIPS = 20

# Skip reasons (keys of ColdStartStats.skipped).
NOT_R1_ZERO = "not_r1_zero"
NO_ANSWER = "no_answer"
EMPTY_REASONING = "empty_reasoning"
MARKER_IN_TEXT = "marker_in_text"
ANSWER_NOT_BOXABLE = "answer_not_boxable"
MARKED_INCORRECT = "marked_incorrect"


class NotConvertible(ValueError):
    """A sample that cannot be rewritten into the readable format; `reason` is one of the skip reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclasses.dataclass
class ColdStartStats:
    path: str  # the samples file read
    rows: int = 0  # non-blank lines seen
    written: int = 0  # SFT examples written
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> rows skipped
    skip_messages: list[str] = dataclasses.field(default_factory=list)  # first "file:row: reason" lines

    def record_skip(self, where: str, err: NotConvertible) -> None:
        self.skipped[err.reason] = self.skipped.get(err.reason, 0) + 1
        if len(self.skip_messages) < MAX_LOGGED_SKIPS:
            self.skip_messages.append(f"{where}: {err}")


def clean_reasoning(text: str) -> str:
    """Whitespace normalised and repeated sentences dropped (see the module docstring)."""
    kept_lines: list[str] = []
    seen_sentences: set[str] = set()
    for raw_line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        sentences = []
        for sentence in _SENTENCE_END.split(" ".join(raw_line.split())):
            if sentence and sentence not in seen_sentences:
                seen_sentences.add(sentence)
                sentences.append(sentence)
        if sentences:
            kept_lines.append(" ".join(sentences))
        elif not raw_line.strip() and kept_lines and kept_lines[-1]:
            kept_lines.append("")  # a paragraph break; a line emptied by dropping repeats is not one
    return "\n".join(kept_lines).strip()


def summary_sentence(answer: str) -> str:
    return f"So the answer is \\boxed{{{answer}}}."


def readable_response(completion: str) -> str:
    """An R1-Zero completion rewritten as `|special_token| reasoning |special_token| summary`.
    Raises NotConvertible (with a skip reason) when it cannot be."""
    parts = split_completion(completion, "r1_zero")
    if not parts.well_formed:
        raise NotConvertible(NOT_R1_ZERO, parts.note)
    answer, note = extract_answer(completion, "r1_zero")
    if answer is None or answer == _HEDGE:
        raise NotConvertible(NO_ANSWER, note)
    answer = " ".join(answer.split())
    reasoning = clean_reasoning(parts.reasoning)
    if not reasoning:
        raise NotConvertible(EMPTY_REASONING, "nothing left of the reasoning after cleaning")
    if SPECIAL_TOKEN in completion:
        raise NotConvertible(MARKER_IN_TEXT, f"the text contains the marker {SPECIAL_TOKEN!r}")
    response = format_r1_response(reasoning, summary_sentence(answer))
    read_back, _ = extract_answer(response, "r1")
    if not split_completion(response, "r1").well_formed or read_back != answer:
        # e.g. unbalanced braces in the answer close the box early
        raise NotConvertible(ANSWER_NOT_BOXABLE, f"answer {answer[:80]!r} does not survive \\boxed{{}}")
    return response


def cold_start_example(sample: dict, example_id: str, path: str = "<memory>", row: int | None = None) -> dict:
    """One scored sample {"question", "completion" | "response", "answer", "task"?, "meta"?} -> the SFT
    example {"id", "question", "response", "answer", "task", "meta"}; `path` and `row` name the sample in
    errors and in meta["source"]. Raises DataError for a malformed sample, NotConvertible for one to skip."""
    where = (path, row)
    if not isinstance(sample, dict):
        raise DataError(*where, f"expected a JSON object, got {type(sample).__name__}")
    question = _text(sample, "question", where)
    answer = _text(sample, "answer", where)
    present = [f for f in ("completion", "response") if f in sample]
    if len(present) != 1:
        raise DataError(*where, f"expected exactly one of 'completion' / 'response', found {present}")
    completion = _text(sample, present[0], where)
    task = _text(sample, "task", where) if "task" in sample else "math"
    meta = sample.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise DataError(*where, f"field 'meta' is {type(meta).__name__}, expected an object")
    correct = sample.get("correct", True)
    if not isinstance(correct, bool):
        raise DataError(*where, f"field 'correct' is {type(correct).__name__}, expected true/false")
    if not correct:
        raise NotConvertible(MARKED_INCORRECT, "the sample is marked \"correct\": false")
    meta = dict(meta)
    if "source" in meta:
        meta["problem_source"] = meta["source"]
    meta["source"] = path if row is None else f"{path}:{row}"
    if "id" in sample:
        meta["sample_id"] = sample["id"]
    if "prompt_id" in sample:
        meta["prompt_id"] = sample["prompt_id"]
    return {"id": example_id, "question": question, "response": readable_response(completion),
            "answer": answer, "task": task, "meta": meta}


def build_cold_start_file(samples_path: str | os.PathLike, out_path: str | os.PathLike) -> ColdStartStats:
    """Reads a JSONL (or .jsonl.gz) of samples, writes a JSONL of SFT examples (ids "<stem>-<row>", row =
    1-based line number) readable by `readers.read_sft_file` and `pipeline.make_sft_dataset`. The output
    is written to a temporary file and renamed, so a DataError never leaves a partial file behind."""
    samples_path, out_path = os.fspath(samples_path), os.fspath(out_path)
    stats = ColdStartStats(samples_path)
    stem = Path(samples_path).name.split(".")[0]
    opener = gzip.open if samples_path.endswith(".gz") else open
    tmp_path = out_path + ".tmp"
    try:
        with opener(samples_path, "rb") as src, open(tmp_path, "w", encoding="utf-8") as dst:
            for row, raw in enumerate(src, start=1):
                if not raw.strip():
                    continue
                stats.rows += 1
                try:
                    sample = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(samples_path, row, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
                except json.JSONDecodeError as e:
                    raise DataError(samples_path, row, f"malformed JSON ({e.msg} at column {e.colno})") from None
                try:
                    example = cold_start_example(sample, f"{stem}-{row}", samples_path, row)
                except NotConvertible as err:
                    stats.record_skip(f"{samples_path}:{row}", err)
                    continue
                dst.write(json.dumps(example, ensure_ascii=False) + "\n")
                stats.written += 1
        os.replace(tmp_path, out_path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return stats


def _text(sample: dict, field: str, where: tuple[str, int | None]) -> str:
    if field not in sample:
        raise DataError(*where, f"missing field {field!r} (has {sorted(sample)})")
    value = sample[field]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # integer answers
    if not isinstance(value, str):
        raise DataError(*where, f"field {field!r} is {type(value).__name__}, expected text")
    if not value.strip():
        raise DataError(*where, f"field {field!r} is empty")
    return value
