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
    Well formed = not empty: a chat prompt that asks for no answer format has no format to check.
  * "chat_boxed": the regions of "chat", for chat prompts that instruct "put your final answer within
    \\boxed{}" (the prompt template "chatml_boxed"). Well formed = the final region gives exactly one
    answer in a box: at least one \\boxed{...}, no empty box, and no two boxes with different contents
    (repeating the same box is allowed, as accuracy reads it: `extract_answer`).
  * hedging scores 0: several different boxed answers, an empty box (no_answer), "3 or 4", and lists
    when the gold is a single value (enumerating every option).
The reasoning region never contains the tags or the markers themselves. Extraction reads the text in one
pass (boxed_contents, _last_answer_block, _r1_zero_well_formed): time linear in its length, whatever the
brace pattern. Equivalence (`equivalent`, `answers_match`): docs/reward.md § Math accuracy, Numbers and Forms.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import sympy

from r1jax.reward import math_parse as mp
from r1jax.reward.types import NO_ANSWER, OK, TEMPLATES, WRONG, ItemError, Verdict

REL_TOL = sympy.Rational(1, 10**6)  # a decimal answer must agree with the gold to 1e-6 of |gold| (see _close)

# ---------------------------------------------------------------- extraction, one pass over the text

# A box command, or a brace. One left-to-right scan with a stack of open braces finds every box's closing
# brace, so unclosed boxes cost nothing extra (each used to scan to the end of the text: quadratic).
_BOX_OR_BRACE = re.compile(r"\\(?:boxed|fbox)\s*|[{}]")
_WORD = re.compile(r"\S+")


def boxed_contents(text: str) -> list[str]:
    """All \\boxed{...} / \\fbox{...} contents, in order, with nested braces matched. A box inside an earlier
    (closed) box belongs to it; an unclosed box holds no answer; "\\boxed 5" holds the word after it."""
    # Per box command, in text order, in flat int lists (a megabyte of boxes would otherwise be 10^5 objects
    # for the cyclic garbage collector to walk again and again): where it starts, where its content starts
    # (after its "{"), and where its closing "}" is (-1 while open; -2 for "\boxed 5", whose word is in `words`).
    starts: list[int] = []
    content_starts: list[int] = []
    closes: list[int] = []
    words: dict[int, str] = {}
    open_braces: list[int] = []  # per open "{": the index of the box it opens, or -1 for a plain brace
    for m in _BOX_OR_BRACE.finditer(text):
        token, at = m.group(0), m.start()
        if token == "{":
            # the "{" right after a box command opens that box; any other "{" is just a brace
            opens_box = bool(starts) and closes[-1] == -1 and content_starts[-1] == at + 1
            open_braces.append(len(starts) - 1 if opens_box else -1)
        elif token == "}":
            k = open_braces.pop() if open_braces else -1
            if k >= 0:
                closes[k] = at
        elif m.end() < len(text):  # a box command at the very end of the text holds nothing
            after = m.end()
            starts.append(at)
            if text[after] == "{":
                content_starts.append(after + 1)
                closes.append(-1)
            else:  # "\boxed 5": the word after it
                content_starts.append(after)
                closes.append(-2)
                words[len(starts) - 1] = _WORD.match(text, after).group(0)
    out, end = [], 0
    for k, start in enumerate(starts):
        if start < end or closes[k] == -1:
            continue  # inside the previous box, or never closed
        if closes[k] == -2:
            out.append(words[k])
        else:
            out.append(text[content_starts[k] : closes[k]])
            end = closes[k]
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
    """Reasoning and final part of `completion` under the reward template "r1_zero", "r1", "chat" or
    "chat_boxed"."""
    if template == "r1_zero":
        return _split_r1_zero(completion)
    if template == "r1":
        return _split_r1(completion)
    if template == "chat":
        return _split_chat(completion)
    if template == "chat_boxed":
        return _split_chat_boxed(completion)
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


def _split_chat_boxed(completion: str) -> CompletionParts:
    chat = _split_chat(completion)
    if chat.final is None:
        return dataclasses.replace(chat, well_formed=False, note="a <think> never closed: no final answer")
    boxes = [b.strip() for b in boxed_contents(chat.final)]
    if not boxes:
        note = "no \\boxed{} answer after the reasoning"
    elif not all(boxes):
        note = "an empty \\boxed{}"
    elif len(set(boxes)) > 1:
        note = f"{len(set(boxes))} different boxed answers"
    else:
        note = ""
    return dataclasses.replace(chat, well_formed=not note, note=note)


def _last_answer_block(completion: str) -> str | None:
    """The content of the last <answer>...</answer>, pairing each <answer> with the first </answer> after it
    and going on after that (what re.findall(r"<answer>(.*?)</answer>") gives, without its quadratic scan
    for every <answer> that is never closed)."""
    last, pos = None, 0
    while True:
        start = completion.find("<answer>", pos)
        if start < 0:
            return last
        close = completion.find("</answer>", start + len("<answer>"))
        if close < 0:
            return last
        last, pos = completion[start + len("<answer>") : close], close + len("</answer>")


def _r1_zero_well_formed(completion: str) -> bool:
    """[<think>] reasoning </think> <answer> answer </answer>: one of each tag, whitespace only around them,
    reasoning and answer free of tags and not empty (an empty <answer></answer> earned full format credit,
    and a GRPO policy found it). A linear scan over the tags (the equivalent regex backtracked over
    leading whitespace: quadratic)."""
    text = completion.lstrip()
    if text.startswith("<think>"):
        text = text[len("<think>") :]
    tags = [(m.group(0), m.start(), m.end()) for m in itertools.islice(_TAGS.finditer(text), 4)]
    if [t for t, _, _ in tags] != ["</think>", "<answer>", "</answer>"]:
        return False
    (_, think_start, think_end), (_, answer_start, answer_open_end), (_, answer_close, answer_end) = tags
    return (not text[think_end:answer_start].strip() and not text[answer_end:].strip()
            and bool(text[:think_start].strip()) and bool(text[answer_open_end:answer_close].strip()))


def _split_r1_zero(completion: str) -> CompletionParts:
    # The prompt ends with "Assistant:"; the completion may open <think> itself or continue as if it had.
    before = completion.rsplit("</think>", 1)[0]
    ok = _r1_zero_well_formed(completion)
    note = "" if ok else ("expected [<think>] reasoning </think> <answer> answer </answer>: one of each, "
                          "reasoning and answer not empty, nothing after")
    return CompletionParts(_reasoning(before), _last_answer_block(completion), ok, note)


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


# ---------------------------------------------------------------- equivalence of parsed answers

_EVAL_DIGITS = 60  # working precision for numeric checks (sympy Floats: no overflow at 1e±10000)
_REFUTE = sympy.Rational(1, 10**40)  # relative difference that refutes exact equality at once
_AGREE = sympy.Rational(1, 10**50)  # relative agreement accepted when sympy can neither prove nor refute


def _numeric(x):
    """x evaluated at _EVAL_DIGITS digits as a sympy number, or None when it does not evaluate to one."""
    try:
        v = x.evalf(_EVAL_DIGITS)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if v.is_number and not v.has(sympy.nan, sympy.zoo, sympy.oo) else None


def _exactly_equal(a, b) -> bool:
    """Exact equality of two constant expressions (integers, rationals, surds, pi expressions)."""
    if a == b:
        return True
    if a.is_Rational and b.is_Rational:
        return False
    if (a.is_Rational and b.is_rational is False) or (b.is_Rational and a.is_rational is False):
        return False  # a rational is never an irrational value, however many digits it matches
    diff = a - b
    if diff == 0:
        return True
    d, va, vb = _numeric(diff), _numeric(a), _numeric(b)
    if d is None or va is None or vb is None:
        return False
    scale = max(sympy.Abs(va), sympy.Abs(vb))
    if sympy.Abs(d) > _REFUTE * scale:
        return False
    proven = diff.equals(0)  # simplification, minimal polynomials; None when sympy cannot decide
    if proven is not None:
        return bool(proven)
    return bool(sympy.Abs(d) <= _AGREE * scale)


def _abs_difference(a, b):
    """|a - b| (exact for rationals, else at _EVAL_DIGITS digits), or None when it does not evaluate."""
    if a.is_Rational and b.is_Rational:
        return abs(a - b)
    d = _numeric(a - b)
    return None if d is None else sympy.Abs(d)


def _close(pred, gold, unit) -> bool:
    """The tolerance for a decimal: pred is gold rounded to `unit` (|pred - gold| <= unit/2) and agrees with
    it to REL_TOL of |gold| (about seven significant digits), at every magnitude."""
    diff = _abs_difference(pred, gold)
    magnitude = _abs_difference(gold, sympy.Integer(0))
    if diff is None or magnitude is None:
        return False
    return bool(diff <= unit / 2) and bool(diff <= REL_TOL * magnitude)


def _values_equal(pred, gold) -> bool:
    """Two values (sympy expressions or DecimalNumbers); the numeric rules of docs/reward.md."""
    p, g = mp.exact_value(pred), mp.exact_value(gold)
    if not (isinstance(p, sympy.Expr) and isinstance(g, sympy.Expr)):
        return False
    if any(x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) for x in (p, g)):
        return p == g
    if p.free_symbols or g.free_symbols:
        return _symbolic_equal(p, g)  # decimals inside expressions are exact rationals here
    if _exactly_equal(p, g):
        return True
    units = [x.unit for x in (pred, gold) if isinstance(x, mp.DecimalNumber)]
    if not units:
        return False  # both sides exact: no tolerance
    if g.is_integer:
        return False  # an integer gold is matched only exactly (1000000.5 is not 1000000)
    return _close(p, g, max(units))  # the coarser decimal: neither side is more precise than its digits


def _symbolic_equal(a, b) -> bool:
    if a == b:
        return True
    # different free symbols do not refute (sin^2 x + cos^2 x is 1); the probes below do, cheaply
    if _differs_numerically(a, b):
        return False  # cheap and exact-enough refutation; simplify() can take minutes on big powers
    return sympy.simplify(a - b) == 0


_PROBE_POINTS = (sympy.Rational(7, 5), sympy.Rational(-3, 11), sympy.Rational(29, 13))


def _differs_numerically(a, b) -> bool:
    """True when a - b is clearly nonzero at some rational point (never True for identical functions)."""
    syms = sorted(a.free_symbols | b.free_symbols, key=str)
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
    """Structural equivalence of parsed answers (see docs/reward.md § Math accuracy for the rules)."""
    if isinstance(pred, mp.Percent):
        return equivalent(pred.value, gold) or _equivalent_or_false(mp.scaled(pred.value, sympy.Rational(1, 100)), gold)
    if isinstance(gold, mp.Percent):
        return equivalent(pred, gold.value) or _equivalent_or_false(pred, mp.scaled(gold.value, sympy.Rational(1, 100)))
    p_values, g_values = _assignment(pred), _assignment(gold)
    if p_values is not None and g_values is not None and len(g_values) > 1 and p_values.keys() == g_values.keys():
        return all(equivalent(p_values[name], g_values[name]) for name in g_values)
    if isinstance(pred, mp.Labelled) or isinstance(gold, mp.Labelled):
        return _labelled_equal(pred, gold)
    if isinstance(pred, mp.Chain) or isinstance(gold, mp.Chain):
        return _chain_equal(pred, gold)
    if isinstance(pred, mp.Inequality) or isinstance(gold, mp.Inequality):
        if not (isinstance(pred, mp.Inequality) and isinstance(gold, mp.Inequality)):
            return False
        return pred.strict == gold.strict and _values_equal(pred.expr, gold.expr)
    if isinstance(pred, mp.Seq) or isinstance(gold, mp.Seq):
        if not (isinstance(pred, mp.Seq) and isinstance(gold, mp.Seq)):
            return False
        return _seq_equal(pred, gold)
    return _values_equal(pred, gold)


def _equivalent_or_false(pred, gold) -> bool:
    return pred is not None and gold is not None and equivalent(pred, gold)


def _labelled_equal(pred, gold) -> bool:
    """A label names the answer: against a bare value only the value counts; against another label the
    labels must agree (a tuple label may list its variables in another order); against an equation a
    variable label is the equation `label = value`."""
    if isinstance(pred, mp.Labelled) and isinstance(gold, mp.Labelled):
        if pred.label == gold.label:
            return equivalent(pred.value, gold.value)
        pe, ge = _as_equation(pred), _as_equation(gold)
        return pe is not None and ge is not None and _equations_equal(pe, ge)
    if isinstance(pred, mp.Labelled):
        if _is_equation(gold):
            pe = _as_equation(pred)
            return pe is not None and _equations_equal(pe, gold)
        return equivalent(pred.value, gold)
    if _is_equation(pred):
        ge = _as_equation(gold)
        return ge is not None and _equations_equal(pred, ge)
    return equivalent(pred, gold.value)


def _assignment(x) -> dict | None:
    """Values by variable name for (a,b) = (4,1), for a = 4, and for a list of those with distinct names
    (a = 4, b = 1); None for anything else. Two assignments of the same variables compare per variable, so
    (b,a) = (1,4) and a = 4, b = 1 both answer (a,b) = (4,1)."""
    if isinstance(x, mp.Labelled):
        if len(x.names) == 1:
            return {x.names[0]: x.value}
        if x.names and isinstance(x.value, mp.Seq) and x.value.kind == "tuple" and len(x.value.items) == len(x.names):
            return dict(zip(x.names, x.value.items))
        return None
    if isinstance(x, mp.Seq) and x.kind in ("list", "tuple"):
        parts = [_assignment(item) if isinstance(item, mp.Labelled) else None for item in x.items]
        if any(p is None or len(p) != 1 for p in parts):
            return None
        merged = {name: value for p in parts for name, value in p.items()}
        return merged if len(merged) == len(parts) else None  # a name given twice is a hedge, not an assignment
    return None


def _as_equation(labelled: mp.Labelled):
    if labelled.label_expr is None or isinstance(labelled.value, mp.Chain):
        return None
    return mp.Chain((labelled.label_expr, labelled.value), ("=",))


def _is_equation(x) -> bool:
    """A two-sided "=" whose sides differ (2x - y + 3 = 0). One whose sides agree (2 + 3 = 5) is a
    computation that ends in its answer."""
    return isinstance(x, mp.Chain) and x.ops == ("=",) and not _chain_consistent(x)


def _equations_equal(p: mp.Chain, g: mp.Chain) -> bool:
    """lhs - rhs equal up to sign (y = 2x + 3 and 2x - y + 3 = 0); sides that are not expressions (tuples,
    sets) side by side, in either order."""
    (pl, pr), (gl, gr) = (tuple(_as_expression(x) for x in c.sides) for c in (p, g))
    if all(x is not None for x in (pl, pr, gl, gr)):
        d1, d2 = pl - pr, gl - gr
        return _values_equal(d1, d2) or _values_equal(d1, -d2)
    (pl, pr), (gl, gr) = p.sides, g.sides
    return (equivalent(pl, gl) and equivalent(pr, gr)) or (equivalent(pl, gr) and equivalent(pr, gl))


def _as_expression(x):
    if isinstance(x, mp.Percent):
        x = mp.scaled(x.value, sympy.Rational(1, 100))
    x = mp.exact_value(x)
    return x if isinstance(x, sympy.Expr) else None


def _chain_consistent(chain: mp.Chain) -> bool:
    """Every link holds: exact sides equal (under `equivalent`); a decimal within one unit of its last digit
    of the side it rounds ("=" or "≈": 1/3 = 0.333 is read as rounding); "≈" between two exact sides only
    when they are equal (pi ≈ 22/7 is not a consistent answer)."""
    for a, b in zip(chain.sides, chain.sides[1:]):
        units = [x.unit for x in (a, b) if isinstance(x, mp.DecimalNumber)]
        if units:
            ea, eb = _as_expression(a), _as_expression(b)
            if ea is None or eb is None or ea.free_symbols or eb.free_symbols:
                return False
            diff = _abs_difference(ea, eb)
            if diff is None or not bool(diff < max(units)):
                return False
        elif not equivalent(a, b):
            return False
    return True


def _chain_answer(chain: mp.Chain, other):
    """The one side of a consistent chain that is compared: the last side when `other` is a decimal
    (x = 3/8 = 0.375 answers 0.375), else the last side that is not a decimal (x = 1/3 ≈ 0.333 answers
    1/3). None for an inconsistent chain (3 = 4 answers nothing)."""
    if not _chain_consistent(chain):
        return None
    if isinstance(other, mp.DecimalNumber):
        return chain.sides[-1]
    exact = [x for x in chain.sides if not isinstance(x, mp.DecimalNumber)]
    return exact[-1] if exact else chain.sides[-1]


def _chain_equal(pred, gold) -> bool:
    if _is_equation(pred) or _is_equation(gold):  # an equation answers only an equation
        return _is_equation(pred) and _is_equation(gold) and _equations_equal(pred, gold)
    if isinstance(pred, mp.Chain):
        side = _chain_answer(pred, gold)
        return side is not None and equivalent(side, gold)
    side = _chain_answer(gold, pred)
    return side is not None and equivalent(pred, side)


_UNORDERED = {"set", "list", "set_union"}


def _seq_equal(p: mp.Seq, g: mp.Seq) -> bool:
    if len(p.items) != len(g.items):
        return False
    if {p.kind, g.kind} & {"matrix", "row"}:  # matrices: same shape, elementwise
        return p.kind == g.kind and all(equivalent(x, y) for x, y in zip(p.items, g.items))
    if g.kind == "interval" or p.kind == "interval":
        # a 2-tuple (a, b) also reads as the open interval (a, b): 0 < x < 3 answers "(0,3)"
        pb = "()" if p.kind == "tuple" else p.brackets
        gb = "()" if g.kind == "tuple" else g.brackets
        if not ({p.kind, g.kind} <= {"interval", "tuple"} and pb == gb):
            return False
    elif (p.kind in _UNORDERED) != (g.kind in _UNORDERED):
        return False
    if p.kind in _UNORDERED and g.kind in _UNORDERED:
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
