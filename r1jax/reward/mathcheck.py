"""Math accuracy: final-answer extraction and sympy equivalence (runs inside a killable worker).

Extraction policy (docs/reward.md):
  * template "r1_zero": the answer is the content of the last <answer>...</answer>; if that content has
    \\boxed{...}, the boxed content is the answer.
  * templates "r1" / "chat": the answer is the last \\boxed{...} after the reasoning, i.e. after the last
    </think> (the whole text when there is no think block). A <think> that never closes means the
    answer is only inside the reasoning: no_answer.
  * hedging scores 0: several different boxed answers, an empty box (no_answer), "3 or 4", and lists
    when the gold is a single value (enumerating every option).
"""

from __future__ import annotations

import re

import sympy

from r1jax.reward import math_parse as mp
from r1jax.reward.types import NO_ANSWER, OK, WRONG, Verdict

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


def after_reasoning(text: str) -> str | None:
    """The text after the last </think>; None when a <think> is left open (answer only in the reasoning)."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return None
    return text


def extract_answer(completion: str, template: str) -> tuple[str | None, str]:
    """-> (answer string or None, note). None means no answer was given."""
    if template == "r1_zero":
        found = _ANSWER_RE.findall(completion)
        if not found:
            return None, "no <answer> block"
        region = found[-1]
        boxes = boxed_contents(region)
        if not boxes:
            return region.strip() or None, "answer block"
    else:
        region = after_reasoning(completion)
        if region is None:
            return None, "think block never closed"
        boxes = boxed_contents(region)
        if not boxes:
            return None, "no \\boxed{} after the reasoning"
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
