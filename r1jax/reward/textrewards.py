"""Format, language-consistency and countdown rewards: pure functions of the completion text.

Where the reasoning and the final part of a completion are is decided in one place,
`mathcheck.split_completion` (per reward template); these rewards only read its regions.
Format (paper Table 1 and section 2.3.1), 1.0 when the layout is exactly:
  r1_zero: [<think>] reasoning </think> <answer> answer </answer>   (nothing else after; the prompt ends
           with "Assistant:", so the completion may open <think> itself or continue as if it had)
  r1:      |special_token| reasoning |special_token| summary         (exactly two markers, the first at
           the start, non-empty reasoning and summary, no <think>/<answer> tags)
  chat:    no structure required; any non-empty completion scores 1.
"""

from __future__ import annotations

import re
from fractions import Fraction

from r1jax.reward.mathcheck import boxed_contents, split_completion
from r1jax.reward.types import NO_ANSWER, OK, WRONG, ItemError, Verdict


def format_reward(completion: str, template: str) -> Verdict:
    parts = split_completion(completion, template)
    ok = parts.well_formed
    detail = f"{template} format ok" if ok else f"{template} format violated: {parts.note}"
    return Verdict(1.0 if ok else 0.0, OK if ok else WRONG, detail)


# ---------------------------------------------------------------- language consistency (§2.3.2)

# A "word" is a run of letters of one script; every Han / kana character counts as one word, since
# Chinese and Japanese are not space-separated. LaTeX commands, numbers and symbols are not words.
_SCRIPTS = {
    "en": r"[A-Za-z\u00C0-\u024F]+",  # Latin (also covers fr, de, es, ...)
    "zh": r"[\u4E00-\u9FFF\u3400-\u4DBF]",
    "ja": r"[\u3040-\u30FF\u4E00-\u9FFF]",
    "ru": r"[\u0400-\u04FF]+",
    "ko": r"[\uAC00-\uD7AF]+",
}
_SCRIPTS.update({lang: _SCRIPTS["en"] for lang in ("fr", "de", "es", "it", "pt", "latin")})
_ANY_WORD = re.compile("|".join(f"(?:{p})" for p in dict.fromkeys(_SCRIPTS.values())))


def language_share(text: str, language: str) -> tuple[int, int]:
    """(words of `text` in `language`, all words of `text`). Raises ItemError for an unknown language."""
    if not isinstance(language, str) or language not in _SCRIPTS:
        raise ItemError(f"meta.language {language!r} not supported; choose from {sorted(_SCRIPTS)}")
    words = _ANY_WORD.findall(re.sub(r"\\[A-Za-z]+", " ", text))  # LaTeX commands are not words
    target = re.compile(_SCRIPTS[language])
    return sum(1 for w in words if target.fullmatch(w)), len(words)


def language_reward(completion: str, language: str, template: str = "chat") -> Verdict:
    """Proportion of words of the reasoning region (`split_completion`) that are in `language` (paper
    section 2.3.2). The default template "chat" reads the text before the last </think>."""
    hits, total = language_share(split_completion(completion, template).reasoning, language)
    if not total:
        return Verdict(0.0, NO_ANSWER, "no words in the reasoning")
    return Verdict(hits / total, OK, f"{hits}/{total} words in {language}")


# ---------------------------------------------------------------- countdown (TinyZero task)

_CD_TOKEN = re.compile(r"\s*(\d+|[-+*/()])")
MAX_CD_CHARS = 300


def _cd_parse(expr: str) -> tuple[Fraction, list[int]]:
    """Safe arithmetic parser for + - * / and parentheses over integers -> (value, numbers used)."""
    if len(expr) > MAX_CD_CHARS:
        raise ValueError("expression too long")
    pos, toks = 0, []
    expr = expr.replace("\\times", "*").replace("\\cdot", "*").replace("×", "*").replace("÷", "/").rstrip()
    while pos < len(expr):
        m = _CD_TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"unexpected character {expr[pos]!r}")
        toks.append(m.group(1))
        pos = m.end()
    used: list[int] = []
    i = 0

    def peek():
        return toks[i] if i < len(toks) else None

    def take():
        nonlocal i
        i += 1
        return toks[i - 1]

    def expr_(depth):
        if depth > 50:
            raise ValueError("nesting too deep")
        v = term(depth)
        while peek() in ("+", "-"):
            v = v + term(depth) if take() == "+" else v - term(depth)
        return v

    def term(depth):
        v = factor(depth)
        while peek() in ("*", "/"):
            op, w = take(), factor(depth)
            if op == "/" and w == 0:
                raise ValueError("division by zero")
            v = v * w if op == "*" else v / w
        return v

    def factor(depth):
        tok = peek()
        if tok == "(":
            take()
            v = expr_(depth + 1)
            if take() != ")" if peek() is not None else True:
                raise ValueError("unbalanced parenthesis")
            return v
        if tok is not None and tok.isdigit():
            take()
            if len(tok) > 12:
                raise ValueError("number too long")
            used.append(int(tok))
            return Fraction(int(tok))
        raise ValueError(f"unexpected {tok!r}")

    value = expr_(0)
    if peek() is not None:
        raise ValueError(f"unexpected {peek()!r}")
    return value, used


def countdown_answer(completion: str, template: str) -> str | None:
    """The countdown answer expression, as `countdown_reward` grades it and the server reports it.

    Read from the final region of `split_completion`: the whole last <answer> block for "r1_zero", the
    last \\boxed{...} of the summary for "r1" (of the text after the last </think> for "chat"); a box in
    the reasoning never counts. Text from the first "=" on is dropped ("(6-2)*25 = 100" -> "(6-2)*25").
    None when there is no answer or the expression is blank. Raises ItemError for an unknown template."""
    region = split_completion(completion, template).final
    if region is not None and template != "r1_zero":
        boxes = boxed_contents(region)
        region = boxes[-1] if boxes else None
    expression = region.split("=")[0].strip() if region is not None else ""
    return expression or None


def countdown_reward(completion: str, meta: dict, template: str) -> Verdict:
    """1 if the answer is an expression that uses each given number exactly once (TinyZero's rule;
    meta["use_all"] = False relaxes it to at most once) and evaluates to meta["target"]."""
    numbers, target = meta.get("numbers"), meta.get("target")
    if not (
        isinstance(numbers, list) and all(isinstance(n, int) for n in numbers) and isinstance(target, int)
    ):
        raise ItemError("countdown needs meta.numbers (list of int) and meta.target (int)")
    expr = countdown_answer(completion, template)
    if expr is None:
        return Verdict(0.0, NO_ANSWER, "no answer")
    try:
        value, used = _cd_parse(expr)
    except ValueError as e:
        return Verdict(0.0, WRONG, f"unparseable expression: {e}")
    pool = list(numbers)
    for n in used:
        if n not in pool:
            return Verdict(0.0, WRONG, f"number {n} not available (or used twice)")
        pool.remove(n)
    if meta.get("use_all", True) and pool:
        return Verdict(0.0, WRONG, f"numbers {pool} unused")
    ok = value == target
    return Verdict(1.0 if ok else 0.0, OK if ok else WRONG, f"{expr} = {value}")
