"""Small file helpers every stage uses: atomic writes (a reader sees the old file or the whole new
one, never a partial write) and JSON / JSONL."""

from __future__ import annotations

import json
import os
import uuid


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes `data` to a temporary file beside `path`, fsyncs it and renames it over `path`."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, rows) -> None:
    """Appends rows and fsyncs: a crash leaves at most a torn last line (read_jsonl drops it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file ([] if it does not exist). A torn last line (a run killed mid-write) is
    dropped; a bad line anywhere else is corruption and raises naming the file and line."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[n:]):
                raise ValueError(f"{os.fspath(path)}: line {n} is not valid JSON") from None
    return rows
