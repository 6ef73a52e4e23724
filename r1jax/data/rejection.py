"""Rejection sampling, the filtering half (paper section 2.3.3): from scored samples of the RL checkpoint
keep the correct ones whose chain of thought is readable.

The paper "filtered out chain-of-thought with mixed languages, long paragraphs, and code blocks" and, for
each prompt, "retain[ed] only the correct ones". `select(samples, cfg)` does exactly that, plus exact
de-duplication and an optional cap per prompt. The sampling half (generate k completions per prompt and
score them with the reward server) is the trainer's; this module is pure Python and never imports jax,
so it also runs on a CPU-only box over a JSONL of samples.

A sample is a dict {"prompt_id": str, "question": str, "completion": str, "reward": float,
"correct": bool, "template": "r1_zero" | "r1" | "chat", "meta": dict, "task": str (optional, default
"math"), ...}; extra keys are carried along untouched.

Order of the checks, and so where a sample dropped for several reasons is counted: (1) incorrect
(unless keep_incorrect), (2) the filters in the order of `RejectionConfig.filters` (the first filter
that rejects a sample gets the count; later filters are not run on it), (3) duplicates of a sample
kept so far, (4) the per-prompt cap (input order decides which samples of a prompt are kept).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from r1jax.reward.mathcheck import R1_MARKER, split_completion
from r1jax.reward.textrewards import language_share
from r1jax.reward.types import TEMPLATES, ItemError

DEFAULT_LANGUAGE = "en"  # the reward server's default for meta["language"]
_FENCE = re.compile(r"^[ \t]*(?:```|~~~)", re.M)
_INDENTED = re.compile(r"^(?: {4,}|\t)\S")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
# Paragraphs end at blank lines, and at the tags / markers that separate reasoning from the final part.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n|</?think>|</?answer>|" + re.escape(R1_MARKER))


@dataclasses.dataclass(frozen=True)
class RejectionConfig:
    """What `select` keeps. Filter names are keys of FILTERS."""

    # Filters to run, in this order (the first one that rejects a sample is the one counted).
    filters: tuple[str, ...] = ("mixed_language", "long_paragraph", "code_block")
    # mixed_language: drop when the share of target-language words in the reasoning region is below
    # this. Target = meta["language"] (default "en"); words are counted as the language reward counts
    # them (textrewards.language_share). A reasoning without any word is kept: nothing is mixed.
    min_language_share: float = 0.9
    # long_paragraph: drop when a paragraph (text between blank lines, tags or markers) of the completion
    # is longer than this many characters (stripped).
    max_paragraph_chars: int = 1000
    # code_block: False drops completions with a fenced code block (``` or ~~~) or an indented code block
    # (two or more consecutive lines indented by 4+ spaces or a tab, list items excepted) unless the
    # sample's task is "code"; True disables the check.
    allow_code_blocks: bool = False
    # Drop exact duplicates of (question, completion with runs of whitespace collapsed); the first is kept.
    dedupe: bool = True
    # Keep at most this many samples per prompt_id (the first ones in input order); None: no cap.
    max_per_prompt: int | None = None
    # Keep samples whose "correct" is false (the filters still apply); the paper keeps only correct ones.
    keep_incorrect: bool = False

    def __post_init__(self):
        if isinstance(self.filters, str) or not isinstance(self.filters, (tuple, list)):
            raise ValueError(f"RejectionConfig.filters must be a tuple of filter names, got {self.filters!r}")
        object.__setattr__(self, "filters", tuple(self.filters))
        for name in self.filters:
            if name not in FILTERS:
                raise ValueError(f"RejectionConfig.filters: unknown filter {name!r}; choose from {sorted(FILTERS)}")
        if len(set(self.filters)) != len(self.filters):
            raise ValueError(f"RejectionConfig.filters names a filter twice: {self.filters}")
        if isinstance(self.min_language_share, bool) or not 0.0 <= self.min_language_share <= 1.0:
            raise ValueError(f"RejectionConfig.min_language_share={self.min_language_share!r}; expected 0..1")
        if isinstance(self.max_paragraph_chars, bool) or not (
            isinstance(self.max_paragraph_chars, int) and self.max_paragraph_chars >= 1
        ):
            raise ValueError(f"RejectionConfig.max_paragraph_chars={self.max_paragraph_chars!r}; expected an int >= 1")
        if self.max_per_prompt is not None and (
            isinstance(self.max_per_prompt, bool) or not isinstance(self.max_per_prompt, int) or self.max_per_prompt < 1
        ):
            raise ValueError(f"RejectionConfig.max_per_prompt={self.max_per_prompt!r}; expected None or an int >= 1")
        for name in ("allow_code_blocks", "dedupe", "keep_incorrect"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RejectionConfig.{name}={getattr(self, name)!r}; expected True or False")


@dataclasses.dataclass
class RejectionStats:
    total: int = 0  # samples in
    correct: int = 0  # samples with "correct": true
    incorrect_dropped: int = 0  # dropped as incorrect (0 with keep_incorrect)
    filter_drops: dict[str, int] = dataclasses.field(default_factory=dict)  # filter -> samples it dropped first
    duplicate_drops: int = 0
    cap_drops: int = 0  # dropped by max_per_prompt
    kept: int = 0
    prompts: int = 0  # distinct prompt_ids in
    prompts_kept: int = 0  # prompt_ids with at least one kept sample


# ------------------------------------------------------------------------------------------- filters
# Each filter: (sample, cfg) -> None to keep, or the reason it rejects the sample.


def mixed_language(sample: dict, cfg: RejectionConfig) -> str | None:
    language = sample["meta"].get("language", DEFAULT_LANGUAGE)
    reasoning = split_completion(sample["completion"], sample["template"]).reasoning
    hits, words = language_share(reasoning, language)
    if words and hits / words < cfg.min_language_share:
        return f"{hits}/{words} reasoning words in {language} < {cfg.min_language_share}"
    return None


def long_paragraph(sample: dict, cfg: RejectionConfig) -> str | None:
    longest = max(len(p.strip()) for p in _PARAGRAPH_BREAK.split(sample["completion"]))
    if longest > cfg.max_paragraph_chars:
        return f"a paragraph of {longest} characters > {cfg.max_paragraph_chars}"
    return None


def code_block(sample: dict, cfg: RejectionConfig) -> str | None:
    if cfg.allow_code_blocks or sample.get("task", "math") == "code":
        return None
    text = sample["completion"]
    if _FENCE.search(text):
        return "fenced code block"
    run = 0
    for line in text.split("\n"):
        run = run + 1 if _INDENTED.match(line) and not _LIST_ITEM.match(line) else 0
        if run >= 2:
            return "indented code block"
    return None


FILTERS: dict[str, Callable[[dict, RejectionConfig], str | None]] = {
    "mixed_language": mixed_language,
    "long_paragraph": long_paragraph,
    "code_block": code_block,
}


# -------------------------------------------------------------------------------------------- select


def select(samples: list[dict], cfg: RejectionConfig = RejectionConfig()) -> tuple[list[dict], RejectionStats]:
    """The samples to keep for SFT (input order) and the counts of what was dropped where (module
    docstring: order of the checks). A malformed sample raises ValueError naming its index and field."""
    stats = RejectionStats(filter_drops={name: 0 for name in cfg.filters})
    for index, sample in enumerate(samples):
        _check_sample(sample, index)
    stats.total = len(samples)
    stats.prompts = len({s["prompt_id"] for s in samples})
    seen: set[tuple[str, str]] = set()
    per_prompt: dict[str, int] = {}
    kept = []
    for index, sample in enumerate(samples):
        if sample["correct"]:
            stats.correct += 1
        if not sample["correct"] and not cfg.keep_incorrect:
            stats.incorrect_dropped += 1
            continue
        rejected_by = _first_rejecting_filter(sample, cfg, index)
        if rejected_by is not None:
            stats.filter_drops[rejected_by] += 1
            continue
        key = (sample["question"], " ".join(sample["completion"].split()))
        if cfg.dedupe and key in seen:
            stats.duplicate_drops += 1
            continue
        seen.add(key)
        if cfg.max_per_prompt is not None and per_prompt.get(sample["prompt_id"], 0) >= cfg.max_per_prompt:
            stats.cap_drops += 1
            continue
        per_prompt[sample["prompt_id"]] = per_prompt.get(sample["prompt_id"], 0) + 1
        kept.append(sample)
    stats.kept = len(kept)
    stats.prompts_kept = len(per_prompt)
    return kept, stats


def _first_rejecting_filter(sample: dict, cfg: RejectionConfig, index: int) -> str | None:
    for name in cfg.filters:
        try:
            reason = FILTERS[name](sample, cfg)
        except ItemError as e:  # e.g. an unsupported meta.language
            raise ValueError(f"samples[{index}]: {e}") from None
        if reason is not None:
            return name
    return None


def _check_sample(sample, index: int) -> None:
    where = f"samples[{index}]"
    if not isinstance(sample, dict):
        raise ValueError(f"{where}: expected a dict, got {type(sample).__name__}")
    for field in ("prompt_id", "question", "completion"):
        if not isinstance(sample.get(field), str):
            raise ValueError(f"{where}: field {field!r} must be a string (got {type(sample.get(field)).__name__})")
    if not isinstance(sample.get("correct"), bool):
        raise ValueError(f"{where}: field 'correct' must be true or false (got {sample.get('correct')!r})")
    reward = sample.get("reward")
    if isinstance(reward, bool) or not isinstance(reward, (int, float)):
        raise ValueError(f"{where}: field 'reward' must be a number (got {reward!r})")
    if sample.get("template") not in TEMPLATES:
        raise ValueError(f"{where}: field 'template' is {sample.get('template')!r}; expected one of {TEMPLATES}")
    if not isinstance(sample.get("meta"), dict):
        raise ValueError(f"{where}: field 'meta' must be a dict (got {type(sample.get('meta')).__name__})")
    if not isinstance(sample.get("task", "math"), str):
        raise ValueError(f"{where}: field 'task' must be a string")
