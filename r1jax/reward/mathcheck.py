"""Math accuracy: final-answer extraction and sympy equivalence (runs inside a killable worker).

`split_completion(completion, template)` is the one place that knows how a completion is laid out:
it returns the reasoning region (read by the language reward and the rejection filters), the final
region (where answers are read: math, countdown) and whether the layout is exactly the template's
(the format reward). Rules per template (docs/reward.md):
  * "r1_zero": reasoning = before the last </think>; final = the content of the last <answer>...</answer>
    (if it has \\boxed{...}, the boxed content is the answer).
  * "r1" (readable, paper section 2.3.1: |special_token| reasoning |special_token| summary): reasoning =
    between the first two markers, final = the summary after the second marker; the answer is the last
    \\boxed{...} of the summary (no box in the summary: no_answer). Without any marker the completion
    is read like "chat", so an answer after </think> still counts for accuracy (the format reward
    scores that layout 0).
  * "chat": reasoning = before the last </think> (all text without one); final = after the last </think>
    (all text without think tags; None when a <think> never closes: the answer is only in the reasoning).
  * hedging scores 0: several different boxed answers, an empty box (no_answer), "3 or 4", and lists
    when the gold is a single value (enumerating every option).
The reasoning region never contains the tags or the markers themselves.
"""

from __future__ import annotations

import dataclasses
import re

import sympy

from r1jax.reward import math_parse as mp
from r1jax.reward.types import NO_ANSWER, OK, TEMPLATES, WRONG, ItemError, Verdict

REL_TOL = 1e-6  # numeric tolerance: |pred - gold| <= REL_TOL * max(1, |gold|)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)


def boxed_contents(text: str) -> list[str]:
    """All \\boxed{...} / \\fbox{...} contents, in order, with nested braces matched."""
    out, end = [], 0
    for m in re.finditer(r"\\(boxed|fbox)\s*", text):
        i = m.end()
        if m.start() < end:
            continue  # a box inside the previous box belongs to it
        if i < len(text) and text[i] == "{":
            try:
                content, after = mp.brace_group(text, i)
            except mp.ParseError:  # an unclosed box holds no answer
                continue
            out.append(content)
            end = after - 1
        elif i < len(text):  # "\boxed 5"
            out.append(text[i:].split()[0] if text[i:].split() else "")
    return out


# Equal to r1jax.data.templates.SPECIAL_TOKEN (a test pins it): the reward package cannot import
# r1jax.data, whose package imports jax.
R1_MARKER = "|special_token|"
_TAGS = re.compile(r"</?think>|</?answer>")


@dataclasses.dataclass(frozen=True)
class CompletionParts:
    """A completion split by its template's layout (see the module docstring)."""

    reasoning: str  # the chain of thought, without tags or markers ("" when there is none)
    final: str | None  # where the answer is read; None when the completion never reached that part
    well_formed: bool  # the layout is exactly the template's: the format reward
    note: str  # why the layout is not well formed ("" when it is)


def split_completion(completion: str, template: str) -> CompletionParts:
    """Reasoning and final part of `completion` under the reward template "r1_zero", "r1" or "chat"."""
    if template == "r1_zero":
        return _split_r1_zero(completion)
    if template == "r1":
        return _split_r1(completion)
    if template == "chat":
        return _split_chat(completion)
    raise ItemError(f"field 'template' is {template!r}; expected one of {TEMPLATES}")


def _reasoning(text: str) -> str:
    return _TAGS.sub(" ", text).replace(R1_MARKER, " ").strip()


def _split_chat(completion: str) -> CompletionParts:
    if "</think>" in completion:
        before, after = completion.rsplit("</think>", 1)
        final = after
    else:
        before, final = completion, (None if "<think>" in completion else completion)
    ok = bool(completion.strip())
    return CompletionParts(_reasoning(before), final, ok, "" if ok else "empty completion")


_R1_ZERO = re.compile(
    r"\A\s*(?:<think>)?(?:(?!</?think>|</?answer>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)*</answer>\s*\Z",
    re.S,
)


def _split_r1_zero(completion: str) -> CompletionParts:
    # The prompt ends with "Assistant:"; the completion may open <think> itself or continue as if it had.
    before = completion.rsplit("</think>", 1)[0]
    answers = _ANSWER_RE.findall(completion)
    ok = bool(_R1_ZERO.match(completion))
    note = "" if ok else "expected [<think>] reasoning </think> <answer> answer </answer>, one of each, nothing after"
    return CompletionParts(_reasoning(before), answers[-1] if answers else None, ok, note)


def _split_r1(completion: str) -> CompletionParts:
    pieces = completion.split(R1_MARKER)
    n_markers = len(pieces) - 1
    if n_markers == 0:
        chat = _split_chat(completion)
        return CompletionParts(chat.reasoning, chat.final, False, f"no {R1_MARKER} marker")
    if n_markers == 1:
        before, after = pieces
        if before.strip():  # the marker closes a reasoning whose opening marker was left out
            return CompletionParts(_reasoning(before), after, False, f"one {R1_MARKER} marker, not at the start")
        return CompletionParts(_reasoning(after), None, False, f"second {R1_MARKER} never written: no summary")
    preamble, reasoning, summary = pieces[0], pieces[1], R1_MARKER.join(pieces[2:])
    if n_markers != 2:
        note = f"{n_markers} {R1_MARKER} markers; expected exactly two"
    elif preamble.strip():
        note = f"text before the first {R1_MARKER}"
    elif _TAGS.search(completion):
        note = "<think>/<answer> tags mixed into the readable format"
    elif not reasoning.strip():
        note = "empty reasoning"
    elif not summary.strip():
        note = "empty summary"
    else:
        note = ""
    return CompletionParts(_reasoning(reasoning), summary, not note, note)


def after_reasoning(text: str) -> str | None:
    """The text after the last </think>; None when a <think> is left open (answer only in the reasoning).
    The "chat" final part; kept for callers that do not pass a template."""
    return _split_chat(text).final


def extract_answer(completion: str, template: str) -> tuple[str | None, str]:
    """-> (answer string or None, note). None means no answer was given."""
    parts = split_completion(completion, template)
    region = parts.final
    if template == "r1_zero":
        if region is None:
            return None, "no <answer> block"
        boxes = boxed_contents(region)
        if not boxes:
            return region.strip() or None, "answer block"
    else:
        if region is None:
            return None, parts.note if R1_MARKER in completion and template == "r1" else "think block never closed"
        boxes = boxed_contents(region)
        if not boxes:
            where = "in the summary" if template == "r1" and R1_MARKER in completion else "after the reasoning"
            return None, f"no \\boxed{{}} {where}"
    distinct = {b.strip() for b in boxes}
    if len(distinct) > 1:
        return "\\HEDGE", f"{len(distinct)} different boxed answers"
    ans = boxes[-1].strip()
    return (ans or None), ("empty box" if not ans else "boxed")


def _num_close(a, b) -> bool:
    if isinstance(a, sympy.Integer) and isinstance(b, sympy.Integer):
        return a == b  # integers compare exactly: 106475279602 is not 106475279601
    try:
        da, db = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
    except (TypeError, ValueError):
        return False
    return abs(da - db) <= REL_TOL * max(1.0, abs(db))


def _expr_equal(a, b) -> bool:
    if a == b:
        return True
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        if not (isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase)) or a.shape != b.shape:
            return False
        return all(_expr_equal(x, y) for x, y in zip(a, b))
    if not (isinstance(a, sympy.Basic) and isinstance(b, sympy.Basic)):
        return False
    if a.has(sympy.oo) or b.has(sympy.oo) or a.has(sympy.zoo) or b.has(sympy.zoo):
        return a == b
    if not a.free_symbols and not b.free_symbols:
        if _num_close(a, b):
            return True
    if a.free_symbols != b.free_symbols:
        return False
    if _differs_numerically(a, b):
        return False  # cheap and exact-enough refutation; simplify() can take minutes on big powers
    return sympy.simplify(a - b) == 0


_PROBE_POINTS = (sympy.Rational(7, 5), sympy.Rational(-3, 11), sympy.Rational(29, 13))


def _differs_numerically(a, b) -> bool:
    """True when a - b is clearly nonzero at some rational point (never True for identical functions)."""
    syms = sorted(a.free_symbols, key=str)
    for k, x0 in enumerate(_PROBE_POINTS):
        point = {s: x0 + sympy.Rational(j, 17 + k) for j, s in enumerate(syms)}
        try:
            va, vb = a.evalf(30, subs=point), b.evalf(30, subs=point)
            if not (va.is_number and vb.is_number) or any(
                v.has(sympy.zoo, sympy.nan, sympy.oo) for v in (va, vb)
            ):
                continue
            if bool(abs(va - vb) > 1e-9 * (1 + abs(va) + abs(vb))):  # sympy floats: no overflow
                return True
        except (TypeError, ValueError, ZeroDivisionError):
            continue
    return False


def equivalent(pred, gold) -> bool:
    """Structural equivalence of parsed answers (see module and docs/reward.md for the rules)."""
    if isinstance(pred, mp._Percent):
        return equivalent(pred.value, gold) or equivalent(pred.value / 100, gold)
    if isinstance(gold, mp._Percent):
        return equivalent(pred, gold.value) or equivalent(pred, gold.value / 100)
    if isinstance(gold, mp.Equation) and isinstance(pred, mp.Equation):
        d1 = (pred.lhs - pred.rhs) if _all_exprs(pred) else None
        d2 = (gold.lhs - gold.rhs) if _all_exprs(gold) else None
        if d1 is None or d2 is None:
            return False
        return _expr_equal(d1, d2) or _expr_equal(d1, -d2)
    if isinstance(pred, mp.Equation) and not isinstance(gold, mp.Equation):
        # "x = 5" answers "5": accept when the left side is a lone symbol
        if isinstance(pred.lhs, sympy.Symbol):
            return equivalent(pred.rhs, gold)
        return False
    if isinstance(gold, mp.Equation) and not isinstance(pred, mp.Equation):
        return isinstance(gold.lhs, sympy.Symbol) and equivalent(pred, gold.rhs)
    if isinstance(pred, mp.Seq) or isinstance(gold, mp.Seq):
        if not (isinstance(pred, mp.Seq) and isinstance(gold, mp.Seq)):
            return False
        return _seq_equal(pred, gold)
    return _expr_equal(pred, gold)


def _all_exprs(eq) -> bool:
    return isinstance(eq.lhs, sympy.Basic) and isinstance(eq.rhs, sympy.Basic)


def _seq_equal(p: mp.Seq, g: mp.Seq) -> bool:
    if len(p.items) != len(g.items):
        return False
    unordered = {"set", "list", "set_union"}
    if g.kind == "interval" or p.kind == "interval":
        if p.kind != g.kind or p.brackets != g.brackets:
            return False
    elif (p.kind in unordered) != (g.kind in unordered):
        return False
    if p.kind in unordered and g.kind in unordered:
        remaining = list(g.items)
        for x in p.items:
            hit = next((k for k, y in enumerate(remaining) if equivalent(x, y)), None)
            if hit is None:
                return False
            remaining.pop(hit)
        return True
    return all(equivalent(x, y) for x, y in zip(p.items, g.items))


_HEDGE_WORDS = re.compile(r"\b(or|and/or|either)\b", re.I)


def answers_match(pred_text: str, gold_text: str) -> tuple[bool, str]:
    """Compares answer strings: parsed maths when both parse, normalised text otherwise."""
    if _HEDGE_WORDS.search(pred_text) and not _HEDGE_WORDS.search(gold_text):
        return False, "hedged answer ('or')"
    try:
        gold = mp.parse(gold_text)
    except mp.ParseError:
        gold = None
    try:
        pred = mp.parse(pred_text)
    except mp.TooLarge as e:
        return False, f"rejected: {e}"
    except mp.ParseError:
        pred = None
    if gold is not None and pred is not None:
        return equivalent(pred, gold), "sympy"
    return mp.text_key(pred_text) == mp.text_key(gold_text), "text"


def verify_math(completion: str, gold: str, template: str) -> Verdict:
    answer, note = extract_answer(completion, template)
    if answer is None:
        return Verdict(0.0, NO_ANSWER, note)
    if answer == "\\HEDGE":
        return Verdict(0.0, WRONG, note)
    ok, how = answers_match(answer, gold)
    return Verdict(1.0 if ok else 0.0, OK if ok else WRONG, f"{note}; {how}: {answer[:80]!r}")
