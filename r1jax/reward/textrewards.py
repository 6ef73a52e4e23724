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
import unicodedata
from fractions import Fraction

from r1jax.reward.mathcheck import boxed_contents, extract_answer, split_completion
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


def _letters(*blocks: tuple[int, int], joiners: bool = False) -> str:
    """A word of a script: a run of the letters and combining marks (Unicode L*, M*) of its blocks, so its
    digits and punctuation (Devanagari danda, Arabic comma, Ethiopic wordspace) are not words. With
    `joiners`, ZWNJ/ZWJ inside a word (Persian, Indic scripts) do not split it."""
    cps = [cp for lo, hi in blocks for cp in range(lo, hi + 1) if unicodedata.category(chr(cp))[0] in "LM"]
    ranges: list[list[int]] = []
    for cp in cps:
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    cls = "[" + "".join(f"\\u{a:04X}" if a == b else f"\\u{a:04X}-\\u{b:04X}" for a, b in ranges) + "]"
    return f"{cls}+(?:[\\u200C\\u200D]{cls}+)*" if joiners else f"{cls}+"


# The scripts of the multilingual GSM problems (data.task="mgsm_symbolic", r1jax.data.readers). Thai, Khmer
# and Myanmar are not space-separated: a run of their letters (a phrase) counts as one word.
_SCRIPTS.update({
    "el": _letters((0x0370, 0x03FF), (0x1F00, 0x1FFF)),  # Greek
    "ar": _letters((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF),
                   joiners=True),  # Arabic script (also Persian, Urdu, Pashto, Sindhi, Uyghur, Shahmukhi)
    "hi": _letters((0x0900, 0x097F), (0xA8E0, 0xA8FF), joiners=True),  # Devanagari
    "bn": _letters((0x0980, 0x09FF), joiners=True),  # Bengali-Assamese
    "pa": _letters((0x0A00, 0x0A7F), joiners=True),  # Gurmukhi
    "gu": _letters((0x0A80, 0x0AFF), joiners=True),  # Gujarati
    "or": _letters((0x0B00, 0x0B7F), joiners=True),  # Odia
    "ta": _letters((0x0B80, 0x0BFF), joiners=True),  # Tamil
    "te": _letters((0x0C00, 0x0C7F), joiners=True),  # Telugu
    "kn": _letters((0x0C80, 0x0CFF), joiners=True),  # Kannada
    "ml": _letters((0x0D00, 0x0D7F), joiners=True),  # Malayalam
    "si": _letters((0x0D80, 0x0DFF), joiners=True),  # Sinhala
    "th": _letters((0x0E00, 0x0E7F)),  # Thai
    "km": _letters((0x1780, 0x17FF), (0x19E0, 0x19FF)),  # Khmer
    "my": _letters((0x1000, 0x109F), (0xAA60, 0xAA7F)),  # Myanmar
    "am": _letters((0x1200, 0x139F), (0x2D80, 0x2DDF)),  # Ethiopic
})
# Further languages written in one of the scripts above (codes: ISO 639-1, else 639-3).
_SAME_SCRIPT = {
    "en": ("af", "az", "bm", "bar", "bs", "ca", "ceb", "cs", "da", "dyu", "et", "fi", "fo", "fuv", "om", "ga",
           "ht", "ha", "hr", "hu", "ig", "id", "is", "jv", "rw", "kmr", "ktu", "lv", "ln", "lt", "lg", "mt", "mos",
           "nl", "nn", "nb", "nso", "ny", "pcm", "pl", "ro", "rn", "sk", "sl", "sn", "so", "su", "sv", "sw", "tl",
           "tn", "tr", "uz", "vi", "wo", "xh", "yo", "ms", "zu"),  # Latin
    "ru": ("be", "bg", "kk", "uk"),  # Cyrillic
    "zh": ("yue",),  # Han
    "ar": ("arz", "fa", "ur", "ps", "pnb", "skr", "sd", "ug"),
    "hi": ("mr", "ne", "mai", "mag", "bho", "hne", "sck", "vjk"),  # Devanagari
    "bn": ("as", "ctg"),
}
for _script_of, _langs in _SAME_SCRIPT.items():
    _SCRIPTS.update({lang: _SCRIPTS[_script_of] for lang in _langs})
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


# ---------------------------------------------------------------- exact answers (task "exact")


def _normalise(text: str) -> str:
    return " ".join(text.split()).rstrip(".")


def exact_answer_reward(completion: str, answer: str, template: str) -> Verdict:
    """1.0 when the final answer (read as for math: the boxed answer of the final part) is the gold string,
    compared after collapsing whitespace and dropping a final period. For answers that are text, not
    mathematics (e.g. the tiny pipeline's general instructions: "reverse the words a b" -> "b a")."""
    got, note = extract_answer(completion, template)
    if got is None:
        return Verdict(0.0, NO_ANSWER, note)
    ok = _normalise(got) == _normalise(str(answer))
    return Verdict(1.0 if ok else 0.0, OK if ok else WRONG, f"{got!r} {'==' if ok else '!='} {answer!r}")


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
