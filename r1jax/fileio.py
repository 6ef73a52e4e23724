"""Small file helpers every stage uses, for local paths and object-store URIs (gs://, s3://, ...)
alike: atomic writes (a reader sees the old file or the whole new one, never a partial write), JSON /
JSONL, and the few path queries the stages need.

Remote paths go through etils `epath` (what orbax uses; gs:// needs gcsfs, the `gcs` extra). Object
stores have no rename and no append: `write_atomic` writes the final object in one put (a GCS or S3
object appears whole or not at all), and `append_jsonl` rewrites the whole object.
"""

from __future__ import annotations

import json
import os
import uuid

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URI with a scheme (gs://bucket/run, s3://...); file:// is local. epath knows gs://,
    s3://, az:// and hf://; gs:// needs gcsfs (the `gcs` extra) or TensorFlow."""
    p = os.fspath(path)
    return "://" in p and not p.startswith("file://")


def as_path(path: str | os.PathLike) -> epath.Path:
    return epath.Path(path)


def makedirs(path: str | os.PathLike) -> None:
    """A directory and its parents (object stores have no directories: there it creates nothing)."""
    if is_remote(path):
        epath.Path(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def exists(path: str | os.PathLike) -> bool:
    return epath.Path(path).exists()


def isfile(path: str | os.PathLike) -> bool:
    return epath.Path(path).is_file()


def isdir(path: str | os.PathLike) -> bool:
    """On an object store: some object lies under `path/` (an empty "directory" does not exist)."""
    return epath.Path(path).is_dir()


def read_bytes(path: str | os.PathLike) -> bytes:
    return epath.Path(path).read_bytes()


def read_text(path: str | os.PathLike) -> str:
    return epath.Path(path).read_text(encoding="utf-8")


def read_json(path: str | os.PathLike):
    return json.loads(read_text(path))


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Local: writes `data` to a temporary file beside `path`, fsyncs it and renames it over `path`.
    Remote: one put of the final object (atomic on GCS and S3; a rename there would be a copy)."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if is_remote(path):
        epath.Path(path).write_bytes(data)
        return
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
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
    """Local: appends rows and fsyncs: a crash leaves at most a torn last line (read_jsonl drops it).
    Remote (no append on object stores): reads the object and writes it back whole with the rows
    added, in one atomic put; the cost grows with the file, so append in batches there."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if is_remote(path):
        p = epath.Path(path)
        old = p.read_text(encoding="utf-8") if p.exists() else ""
        if old and not old.endswith("\n"):
            old += "\n"  # never glue a row onto a torn one
        write_atomic(path, old + text)
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def parse_jsonl(text: str, where: str) -> list[dict]:
    """Rows of JSONL text. A torn last line (a run killed mid-write) is dropped; a bad line anywhere
    else is corruption and raises naming `where` and the line."""
    rows = []
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[n:]):
                raise ValueError(f"{where}: line {n} is not valid JSON") from None
    return rows


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file ([] if it does not exist); see parse_jsonl."""
    p = epath.Path(path)
    if not p.exists():
        return []
    return parse_jsonl(p.read_text(encoding="utf-8"), os.fspath(path))
