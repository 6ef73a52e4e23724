"""SFT readers: prompt/response columns and chat messages, JSONL and Parquet, bad rows with file:row."""

import gzip
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1jax.data import readers
from r1jax.data.readers import DataError, SFTFieldMap


def _write_jsonl(path, rows: list) -> str:
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _chat(*turns) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


GOOD_PR = {"question": "What is 2+3?", "response": "<think> 2+3=5 </think> <answer> 5 </answer>"}
GOOD_CHAT = {"messages": _chat(("user", "What is 2+3?"), ("assistant", "5"))}


def test_prompt_response_default_and_mapped_columns(tmp_path):
    path = _write_jsonl(tmp_path / "sft.jsonl", [GOOD_PR, b"", GOOD_PR])  # blank lines are not rows
    examples, stats = readers.read_sft_file(path)
    assert (stats.rows, stats.kept, stats.skipped) == (2, 2, 0)
    assert examples[0] == {"id": "sft-1", "question": GOOD_PR["question"], "response": GOOD_PR["response"],
                           "meta": {"source": f"{path}:1"}}
    assert examples[1]["id"] == "sft-3"  # 1-based line numbers, blank line counted

    rows = [{"prompt": "Say hi.", "completion": " hi", "uid": "u1", "license": "mit", "unused": 1}]
    path = tmp_path / "pc.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(rows[0]) + "\n")
    fields = SFTFieldMap(question="prompt", response="completion", id="uid", keep=("license",))
    (ex,), _ = readers.read_sft_file(path, fields)
    # texts are kept as written (the leading space of the completion is data, not noise)
    assert ex == {"id": "u1", "question": "Say hi.", "response": " hi",
                  "meta": {"source": f"{path}:1", "license": "mit"}}

    alpaca = _write_jsonl(tmp_path / "alpaca.json", [{"instruction": "Add 1 and 1.", "output": "2"}])
    (ex,), _ = readers.read_sft_file(alpaca, SFTFieldMap(question="instruction", response="output"))
    assert (ex["question"], ex["response"]) == ("Add 1 and 1.", "2")


def test_messages_system_and_users_flatten_into_the_question(tmp_path):
    rows = [
        GOOD_CHAT,
        {"messages": _chat(("system", "Be brief."), ("user", "What is 2+3?"), ("assistant", "5"))},
        {"messages": _chat(("user", "Here is a list: 1, 2."), ("user", "Sum it."), ("assistant", "3")),
         "id": "two-users"},
        # only role and content are read
        {"messages": [{"role": "user", "content": "Q", "name": "alice"}, {"role": "assistant", "content": "A"}]},
    ]
    path = _write_jsonl(tmp_path / "chat.jsonl", rows)
    examples, stats = readers.read_sft_file(path, SFTFieldMap(format="messages"))
    assert stats.kept == 4
    assert [(e["question"], e["response"]) for e in examples] == [
        ("What is 2+3?", "5"),
        ("Be brief.\n\nWhat is 2+3?", "5"),
        ("Here is a list: 1, 2.\n\nSum it.", "3"),
        ("Q", "A"),
    ]
    (ex,), _ = readers.read_sft_file(_write_jsonl(tmp_path / "c2.jsonl", [{"conv": GOOD_CHAT["messages"]}]),
                                     SFTFieldMap(format="messages", messages="conv"))
    assert ex["question"] == "What is 2+3?" and ex["meta"]["source"].endswith("c2.jsonl:1")


def test_parquet_both_formats(tmp_path):
    table = pa.table({"prompt": ["p1", "p2", None], "completion": ["r1", "r2", "r3"], "year": [2024, 2025, 2026]})
    path = tmp_path / "pr.parquet"
    pq.write_table(table, path)
    fields = SFTFieldMap(question="prompt", response="completion", keep=("year",))
    with pytest.raises(DataError, match=r"pr\.parquet:3: field 'prompt' is NoneType"):
        readers.read_sft_file(path, fields)
    examples, stats = readers.read_sft_file(path, fields, on_error="skip")
    assert [(e["question"], e["response"], e["meta"]["year"]) for e in examples] == [("p1", "r1", 2024),
                                                                                     ("p2", "r2", 2025)]
    assert (stats.rows, stats.kept, stats.skipped) == (3, 2, 1)
    with pytest.raises(DataError, match=r"pr\.parquet:0: columns \['question', 'response'\] not in file"):
        readers.read_sft_file(path)  # a whole column missing is a config error even with skip
    with pytest.raises(DataError, match=r"pr\.parquet:0: columns \['messages'\] not in file"):
        readers.read_sft_file(path, SFTFieldMap(format="messages"), on_error="skip")

    # list<struct<role, content>>, as HF datasets write chat data
    chats = [_chat(("system", "S"), ("user", "U"), ("assistant", "A")), _chat(("user", "U2"))]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": chats, "id": ["a", "b"]}), path)
    fields = SFTFieldMap(format="messages", id="id")
    with pytest.raises(DataError, match=r"chat\.parquet:2: field 'messages' has no assistant message"):
        readers.read_sft_file(path, fields)
    examples, stats = readers.read_sft_file(path, fields, on_error="skip")
    assert examples == [{"id": "a", "question": "S\n\nU", "response": "A",
                         "meta": {"source": f"{path}:1"}}]
    assert stats.skipped == 1 and stats.errors[0].startswith(f"{path}:2: ")


# (row, format, the field the message must name, the reason)
BAD_ROWS = [
    (b'{"question": "Q", "response": ', "prompt_response", "", "malformed JSON"),
    ('{"question": "caf\u00e9", "response": "A"}'.encode("latin-1"), "prompt_response", "", "not valid UTF-8"),
    (b'["question", "response"]', "prompt_response", "", "expected a JSON object"),
    ({"question": "Q"}, "prompt_response", "'response'", "missing field"),
    ({"question": "Q", "response": "  "}, "prompt_response", "'response'", "is empty"),
    ({"question": ["Q"], "response": "A"}, "prompt_response", "'question'", "is list, expected text"),
    ({"question": "x" * 101, "response": "A"}, "prompt_response", "question", "101 characters, over max_chars=100"),
    ({"question": "Q", "response": "y" * 101}, "prompt_response", "response", "101 characters, over max_chars=100"),
    ({"question": "Q", "response": "A", "id": None}, "prompt_response", "'uid'", "missing field"),
    ({"msgs": []}, "messages", "'messages'", "missing field"),
    ({"messages": "user: Q"}, "messages", "'messages'", "is str, expected a list of messages"),
    ({"messages": []}, "messages", "'messages'", "is empty"),
    ({"messages": ["Q", "A"]}, "messages", "messages[0]", "is str, expected"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "A"}]}, "messages",
     "'messages[0].content'", "missing field"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "A"}]}, "messages",
     "'messages[0].content'", "is int, expected text"),
    ({"messages": _chat(("user", "Q"), ("assistant", ""))}, "messages", "'messages[1].content'", "is empty"),
    ({"messages": _chat(("user", "Q"), ("tool", "A"))}, "messages", "'messages[1].role'", "is 'tool'"),
    ({"messages": _chat(("system", "S"), ("user", "Q"))}, "messages", "'messages'", "no assistant message"),
    ({"messages": _chat(("assistant", "A"), ("user", "Q"))}, "messages", "'messages[0].role'",
     "roles out of order"),
    ({"messages": _chat(("user", "Q"), ("assistant", "A"), ("user", "Q2"), ("assistant", "A2"))}, "messages",
     "'messages[1].role'", "multi-turn conversations are not supported"),
    ({"messages": _chat(("user", "Q"), ("system", "S"), ("assistant", "A"))}, "messages",
     "'messages[1].role'", "a system message must come first"),
    ({"messages": _chat(("system", "S"), ("assistant", "A"))}, "messages", "'messages'", "no user message"),
]


def _fields(fmt: str) -> SFTFieldMap:
    return SFTFieldMap(format="messages") if fmt == "messages" else SFTFieldMap()


@pytest.mark.parametrize("bad, fmt, field, reason", BAD_ROWS)
def test_bad_row_names_file_row_and_field(tmp_path, bad, fmt, field, reason):
    good = GOOD_CHAT if fmt == "messages" else GOOD_PR
    fields = _fields(fmt)
    if field == "'uid'":
        fields = SFTFieldMap(id="uid")
        good = {**GOOD_PR, "uid": "g"}
    path = _write_jsonl(tmp_path / "data.jsonl", [good, b"", good, bad, good])
    with pytest.raises(DataError) as info:
        readers.read_sft_file(path, fields, max_chars=100)
    message = str(info.value)
    assert message.startswith(f"{path}:4: "), message
    assert reason in message and field in message, message
    assert (info.value.path, info.value.row) == (str(path), 4)


@pytest.mark.parametrize("fmt", ["prompt_response", "messages"])
def test_skip_counts_every_bad_row(tmp_path, fmt, caplog):
    good = GOOD_CHAT if fmt == "messages" else GOOD_PR
    bad_rows = [bad for bad, f, field, _ in BAD_ROWS if f == fmt and field != "'uid'"]
    path = _write_jsonl(tmp_path / "data.jsonl", [good, *bad_rows, good])
    with caplog.at_level(logging.WARNING, logger="r1jax.data.readers"):
        examples, stats = readers.read_sft_file(path, _fields(fmt), on_error="skip", max_chars=100)
    n_bad = len(bad_rows)
    assert len(examples) == 2 and (stats.rows, stats.kept, stats.skipped) == (n_bad + 2, 2, n_bad)
    assert [e["meta"]["source"] for e in examples] == [f"{path}:1", f"{path}:{n_bad + 2}"]
    assert [e.split(": ")[0] for e in stats.errors] == [f"{path}:{r}" for r in range(2, n_bad + 2)]
    assert sum("skipping bad row" in r.message for r in caplog.records) == n_bad


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="SFTFieldMap.format='chat'"):
        SFTFieldMap(format="chat")
    path = _write_jsonl(tmp_path / "data.jsonl", [GOOD_PR])
    with pytest.raises(ValueError, match="on_error='ignore'"):
        readers.read_sft_file(path, on_error="ignore")
    with pytest.raises(ValueError, match="x.csv: unknown file type"):
        readers.read_sft_file(tmp_path / "x.csv")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="broken.parquet: not a readable Parquet file"):
        readers.read_sft_file(tmp_path / "broken.parquet")
    with pytest.raises(DataError, match=r"data\.jsonl:1: missing field 'license' \(SFTFieldMap.keep\)"):
        readers.read_sft_file(path, SFTFieldMap(keep=("license",)))


def test_examples_feed_the_sft_pipeline(tmp_path):
    """What read_sft_file returns is what make_sft_dataset consumes; its errors name file:row."""
    from r1jax.data import pipeline
    from r1jax.data.tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer.train(["What is 2+3? The answer is 5."] * 20, vocab_size=300)
    path = _write_jsonl(tmp_path / "chat.jsonl", [GOOD_CHAT, GOOD_CHAT])
    examples, _ = readers.read_sft_file(path, SFTFieldMap(format="messages"))
    cfg = pipeline.SFTPipelineConfig(batch_size=2, seq_len=512, template="r1_zero", pack=False, shuffle=False,
                                     num_epochs=1)
    batch = next(iter(pipeline.make_sft_dataset(examples, tok, cfg, 0, 1)[0]))
    mask = batch.loss_mask_bl[0].astype(bool)
    assert tok.decode(batch.tokens_bl[0][mask].tolist()).strip() == "5"
    strict = pipeline.SFTPipelineConfig(batch_size=2, seq_len=8, template="r1_zero", truncation="fail")
    with pytest.raises(DataError, match=rf"^{path}:1: "):
        pipeline.tokenize_sft(tok, strict, examples[0])
