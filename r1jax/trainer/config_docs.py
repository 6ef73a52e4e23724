"""One-line docs of config fields, for `r1jax <command> --help` and docs/config.md.

Most sections are a dataclass's fields one to one, so their docs are the dataclass's own (the
docstring under a field, or its comment): they cannot drift from the code. The few fields that belong
to no dataclass are documented in FIELD_DOCS here and in a stage's own FIELD_DOCS.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize

from ml_collections import ConfigDict

# Fields shared by several stages that no dataclass holds.
FIELD_DOCS = {
    "name": "run name: the default workdir is runs/<name>",
    "seed": "seed of everything random in the run (data order, sampling, init)",
    "checkpoint.every": "save a checkpoint every this many steps (and at the last)",
    "checkpoint.keep": "checkpoints kept on disk (older ones are deleted)",
    "data.template": "prompt template: r1_zero (paper Table 1), r1 (readable |special_token| format), chatml, "
                     "chatml_boxed (chatml asking for the answer in \\boxed{}; format reward checks it), "
                     "chatml_boxed_1shot (the same after one worked exchange), deepseek_r1",
    "data.question_suffix": "text appended to every question (e.g. the boxed-answer instruction)",
    "data.prompts_per_step": "prompts per RL step (each gives grpo.group_size samples)",
    "report_name": "file name of the evaluation report ('' = the task's name)",
    "reward.weights": "weights of the reward components (accuracy, format, language, plugins); reward = weighted sum",
}


@functools.cache
def dataclass_docs(cls) -> dict[str, str]:
    """{field: first line of its doc} from the class source: the string under a field, else the
    comment on its line, else the comment block above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
    docs = {}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        doc = ""
        nxt = body[i + 1] if i + 1 < len(body) else None
        if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                and isinstance(nxt.value.value, str):
            doc = nxt.value.value
        elif node.lineno in comments and not lines[node.lineno - 1].lstrip().startswith("#"):
            doc = comments[node.lineno]
        else:
            above, line = [], node.lineno - 1
            while line in comments and lines[line - 1].lstrip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            doc = " ".join(above)
        docs[node.target.id] = " ".join(doc.split())
    return {k: _first_sentence(v) for k, v in docs.items() if v}


_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)(?<!etc)\.\s+(?=[A-Z(\"'])")


def _first_sentence(text: str, limit: int = 110) -> str:
    match = _SENTENCE_END.search(text)
    text = text if match is None else text[: match.start() + 1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def flatten(c: ConfigDict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key in sorted(c.keys()):
        value = c[key]
        path = f"{prefix}{key}"
        if isinstance(value, ConfigDict) and key not in ("overrides", "weights"):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value.to_dict() if isinstance(value, ConfigDict) else value
    return out


def field_docs(config: ConfigDict, sections: dict[str, type], stage_docs: dict[str, str]) -> dict[str, str]:
    """{field path: doc} for every leaf of `config`; sections maps a section path to its dataclass."""
    docs = {}
    for path in flatten(config):
        section, _, name = path.rpartition(".")
        cls = sections.get(section)
        doc = (stage_docs.get(path) or FIELD_DOCS.get(path)
               or (dataclass_docs(cls).get(name) if cls is not None and dataclasses.is_dataclass(cls) else None))
        docs[path] = doc or ""
    return docs


def help_text(config: ConfigDict, sections: dict[str, type], stage_docs: dict[str, str]) -> str:
    """The config fields with their current values and docs, grouped by section."""
    docs = field_docs(config, sections, stage_docs)
    values = flatten(config)
    out, last = [], None
    for path, value in values.items():
        section = path.split(".")[0] if "." in path else ""
        if section != last:
            out.append(f"\n  {section or '(top level)'}:")
            last = section
        shown = repr(value) if not isinstance(value, str) else f"'{value}'"
        out.append(f"    --config.{path}={shown}")
        if docs[path]:
            out.append(f"        {docs[path]}")
    return "\n".join(out)


def markdown_reference(config: ConfigDict, sections: dict[str, type], stage_docs: dict[str, str]) -> str:
    """A markdown table of every field: its default in this config and its doc."""
    docs = field_docs(config, sections, stage_docs)
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for path, value in flatten(config).items():
        shown = repr(value).replace("|", "\\|")
        rows.append(f"| `{path}` | `{shown}` | {docs[path].replace('|', chr(92) + '|')} |")
    return "\n".join(rows)
