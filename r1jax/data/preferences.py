"""Preference files for reward models (DeepSeek-R1 §2.3.4): JSONL or Parquet rows of one prompt and
two responses, the chosen (preferred) one and the rejected one.

    pairs, stats = read_preference_file("prefs.jsonl")                          # prompt/chosen/rejected
    pairs, stats = read_preference_file("uf.parquet", PreferenceFieldMap(format="messages"))
    # pair: {"id", "question", "chosen", "rejected", "meta": {"source": "file:row", ...keep}}

format="text": three text columns (`prompt`, `chosen`, `rejected`), the prompt without any template.
format="messages": `chosen` and `rejected` are chat-message lists (the HH-RLHF / UltraFeedback shape):
each is a single-turn chat read by `readers.messages_to_sft` (an optional system message, user
messages, one final assistant message); the assistant messages are the two responses and the earlier
messages, which must be the same in both, are the prompt. The `prompt` column is not read.

Bad rows go through the readers' row machinery: `DataError("file:row: ...")` naming the field
(on_error="fail"), or skipped, logged and counted in ReadStats (on_error="skip"). Besides the
readers' bad rows (malformed JSON, non-UTF-8, missing/empty/non-text field, over max_chars, a
missing `keep` column, every malformed chat), a pair whose chosen and rejected responses are
identical, or whose two chats have different prompts, is a bad row.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from r1jax.data.readers import (
    DataError,
    ReadStats,
    _read_jsonl_rows,
    _read_parquet_rows,
    _text_field,
    messages_to_sft,
)

_FORMATS = ("text", "messages")


@dataclasses.dataclass(frozen=True)
class PreferenceFieldMap:
    """Which columns of a user's preference file hold what. E.g. HH-RLHF / UltraFeedback chats:
    PreferenceFieldMap(format="messages"); prompt/chosen/rejected text: the defaults."""

    # "text": prompt/chosen/rejected text columns; "messages": chosen/rejected hold chat-message lists.
    format: str = "text"
    # text: the column with the prompt (the user's question, without any template).
    prompt: str = "prompt"
    # The column with the preferred response (text, or a chat ending in the assistant message).
    chosen: str = "chosen"
    # The column with the dispreferred response (text, or a chat ending in the assistant message).
    rejected: str = "rejected"
    # A column with a stable id; None: "<file stem>-<row>".
    id: str | None = None
    # Extra columns copied into meta (e.g. a source or kind column); a missing one is a bad row.
    keep: tuple[str, ...] = ()

    def __post_init__(self):
        if self.format not in _FORMATS:
            raise ValueError(f"PreferenceFieldMap.format={self.format!r}; choose one of {_FORMATS}")


def read_preference_file(path: str | os.PathLike, fields: PreferenceFieldMap = PreferenceFieldMap(),
                         on_error: str = "fail", max_chars: int = 1_000_000) -> tuple[list[dict], ReadStats]:
    """Preference pairs {"id", "question", "chosen", "rejected", "meta"} from .jsonl / .jsonl.gz /
    .json (one object per line) / .parquet. Row numbers are 1-based (JSONL: line numbers);
    `max_chars` bounds each text separately (a guard against a broken row)."""

    def convert(record: dict, row: int) -> dict:
        return to_preference_example(record, fields, path, row, max_chars)

    name = os.fspath(path)
    if name.endswith(".parquet"):
        wanted = [fields.chosen, fields.rejected] + ([fields.prompt] if fields.format == "text" else [])
        return _read_parquet_rows(path, on_error, wanted, convert)
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return _read_jsonl_rows(path, on_error, convert)
    raise ValueError(f"{name}: unknown file type (expected .jsonl, .jsonl.gz, .json or .parquet)")


def to_preference_example(record: dict, fields: PreferenceFieldMap, path, row: int, max_chars: int) -> dict:
    """One row -> {"id", "question", "chosen", "rejected", "meta"}; a bad row raises DataError (file:row, field)."""
    if fields.format == "messages":
        question, chosen = _chat(record, fields.chosen, path, row)
        rejected_question, rejected = _chat(record, fields.rejected, path, row)
        if rejected_question != question:
            raise DataError(path, row, f"fields {fields.chosen!r} and {fields.rejected!r} have different prompts "
                                       "(the messages before the last assistant message must be the same)")
    else:
        question = _text_field(record, fields.prompt, path, row)
        chosen = _text_field(record, fields.chosen, path, row)
        rejected = _text_field(record, fields.rejected, path, row)
    for field, text in ((fields.prompt, question), (fields.chosen, chosen), (fields.rejected, rejected)):
        if len(text) > max_chars:
            raise DataError(path, row, f"field {field!r} is {len(text)} characters, over max_chars={max_chars}")
    if chosen == rejected:
        raise DataError(path, row, f"fields {fields.chosen!r} and {fields.rejected!r} are identical: "
                                   "a pair must prefer one response over a different one")
    meta = {"source": f"{os.fspath(path)}:{row}"}
    for key in fields.keep:
        if key not in record:
            raise DataError(path, row, f"missing field {key!r} (PreferenceFieldMap.keep)")
        meta[key] = record[key]
    ex_id = _text_field(record, fields.id, path, row) if fields.id is not None else f"{Path(path).stem}-{row}"
    return {"id": ex_id, "question": question, "chosen": chosen, "rejected": rejected, "meta": meta}


def _chat(record: dict, field: str, path, row: int) -> tuple[str, str]:
    if field not in record:
        raise DataError(path, row, f"missing field {field!r} (has {sorted(record)})")
    return messages_to_sft(record[field], path, row, field)
