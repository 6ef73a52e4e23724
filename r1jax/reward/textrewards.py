"""Format, language-consistency and countdown rewards: pure functions of the completion text.

Format (paper Table 1 and §2.3): the R1-Zero prompt ends with "Assistant: <think>", so the completion
normally *continues inside* the think block; a completion that repeats "<think>" at its start is
accepted too. Templates:
  r1_zero: [<think>] reasoning </think> <answer> answer </answer>   (nothing else after)
  r1:      [<think>] reasoning </think> summary                      (readable: non-empty summary)
  chat:    no structure required; any non-empty completion scores 1.
"""

from __future__ import annotations

import re
from fractions import Fraction

from r1jax.reward.mathcheck import after_reasoning, boxed_contents
from r1jax.reward.types import NO_ANSWER, OK, WRONG, ItemError, Verdict

_R1_ZERO = re.compile(
    r"\A\s*(?:<think>)?(?:(?!</?think>|</?answer>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)*</answer>\s*\Z",
    re.S,
)
_R1 = re.compile(
    r"\A\s*(?:<think>)?(?:(?!</?think>).)+</think>(?:(?!</?think>).)*\S(?:(?!</?think>).)*\Z", re.S
)


def format_reward(completion: str, template: str) -> Verdict:
    if template == "r1_zero":
        ok = bool(_R1_ZERO.match(completion))
    elif template == "r1":
        ok = bool(_R1.match(completion))
    else:
        ok = bool(completion.strip())
    return Verdict(1.0 if ok else 0.0, OK if ok else WRONG, f"{template} format {'ok' if ok else 'violated'}")


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


def reasoning_text(completion: str) -> str:
    """The chain of thought: the text before the last </think> (the whole text if no think block)."""
    return completion.rsplit("</think>", 1)[0] if "</think>" in completion else completion


def language_reward(completion: str, language: str) -> Verdict:
    """Proportion of words of the reasoning that are in `language` (paper §2.3.2)."""
    if not isinstance(language, str) or language not in _SCRIPTS:
        raise ItemError(f"meta.language {language!r} not supported; choose from {sorted(_SCRIPTS)}")
    text = re.sub(r"\\[A-Za-z]+", " ", reasoning_text(completion))  # LaTeX commands are not words
    words = _ANY_WORD.findall(text)
    if not words:
        return Verdict(0.0, NO_ANSWER, "no words in the reasoning")
    target = re.compile(_SCRIPTS[language])
    hits = sum(1 for w in words if target.fullmatch(w))
    return Verdict(hits / len(words), OK, f"{hits}/{len(words)} words in {language}")


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


def countdown_reward(completion: str, meta: dict, template: str) -> Verdict:
    """1 if the answer is an expression that uses each given number exactly once (TinyZero's rule;
    meta["use_all"] = False relaxes it to at most once) and evaluates to meta["target"]."""
    numbers, target = meta.get("numbers"), meta.get("target")
    if not (
        isinstance(numbers, list) and all(isinstance(n, int) for n in numbers) and isinstance(target, int)
    ):
        raise ItemError("countdown needs meta.numbers (list of int) and meta.target (int)")
    if template == "r1_zero":
        found = re.findall(r"<answer>(.*?)</answer>", completion, re.S)
        answer = found[-1] if found else None
    else:
        region = after_reasoning(completion)
        boxes = boxed_contents(region) if region is not None else []
        answer = boxes[-1] if boxes else None
    if answer is None or not answer.strip():
        return Verdict(0.0, NO_ANSWER, "no answer")
    expr = answer.split("=")[0]
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
    return Verdict(1.0 if ok else 0.0, OK if ok else WRONG, f"{expr.strip()} = {value}")
