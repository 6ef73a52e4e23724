"""A safe parser from LaTeX / plain-text math answers to sympy objects (never eval, never sympify).

Model text goes through a hand-written tokenizer and recursive-descent parser that builds sympy
objects node by node, so nothing in the text is ever executed. Magnitudes are screened before each
node is built (digit counts, huge powers, factorials, nesting depth): sympy evaluates integer powers
eagerly in C, which no signal can interrupt. The worker deadline (SIGKILL) is the backstop.

Parsed values are sympy expressions, plus three containers:
  Seq(kind, items)         kind "tuple" for (a, b), "list" for a bare "a, b", "set" for \\{a, b\\}
  Interval-like Seq        kind "interval" with the bracket pair, e.g. "[)" for [a, b)
  Equation(lhs, rhs)
and sympy Matrix for pmatrix/bmatrix.
"""

from __future__ import annotations

import dataclasses
import math
import re

import sympy

MAX_CHARS = 2000  # longer answers are not parsed (a megabyte of LaTeX is an attack, not an answer)
MAX_DEPTH = 60  # nesting depth of the parse tree
MAX_DIGITS = 400  # digits in one literal
MAX_RESULT_DIGITS = 10_000  # estimated digits of an integer power
MAX_FACTORIAL = 500


class ParseError(ValueError):
    pass


class TooLarge(ParseError):
    """The answer asks for an absurd magnitude; rejected before sympy tries to compute it."""


@dataclasses.dataclass(frozen=True)
class Seq:
    kind: str  # "tuple" | "list" | "set" | "interval"
    items: tuple
    brackets: str = ""


@dataclasses.dataclass(frozen=True)
class Equation:
    lhs: object
    rhs: object


# ---------------------------------------------------------------- LaTeX normalisation (text -> text)

_UNIT_WORDS = (
    "degrees?|cm|mm|km|m|meters?|centimeters?|inches|inch|feet|foot|ft|units?|sq|square|cubic|dollars?|cents?|"
    "hours?|minutes?|seconds?|days?|years?|kg|g|grams?|pounds?|miles?|mph|liters?|ml"
)
_GREEK = ("alpha beta gamma delta epsilon theta lambda mu nu rho sigma tau phi chi psi omega").split()
_FUNCS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "arcsin", "arccos", "arctan"}


def brace_group(s: str, i: int) -> tuple[str, int]:
    """Returns the argument starting at s[i] ({...} or one character) and the index after it."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ParseError("missing argument")
    if s[i] != "{":
        if s[i] == "\\":
            m = re.match(r"\\[A-Za-z]+", s[i:])
            if m:
                return s[i : i + m.end()], i + m.end()
        return s[i], i + 1
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1 : j], j + 1
    raise ParseError("unbalanced braces")


def _replace_commands(s: str) -> str:
    """\\frac{a}{b} -> ((a)/(b)), \\sqrt[n]{x} -> root, \\text{..} kept as a marked word."""
    out = []
    i = 0
    while i < len(s):
        m = re.match(r"\\(d|t|c)?frac", s[i:])
        if m:
            a, j = brace_group(s, i + m.end())
            b, j = brace_group(s, j)
            out.append(f"(({_replace_commands(a)})/({_replace_commands(b)}))")
            i = j
            continue
        m = re.match(r"\\sqrt", s[i:])
        if m:
            j = i + m.end()
            index = None
            if j < len(s) and s[j] == "[":
                k = s.index("]", j) if "]" in s[j:] else -1
                if k < 0:
                    raise ParseError("unbalanced [ in \\sqrt")
                index, j = s[j + 1 : k], k + 1
            a, j = brace_group(s, j)
            inner = _replace_commands(a)
            out.append(f"sqrt({inner})" if index is None else f"(({inner})^(1/({_replace_commands(index)})))")
            i = j
            continue
        m = re.match(r"\\(textbf|textit|textrm|text|mathrm|mathbf|mbox|operatorname)(?![A-Za-z])\s*", s[i:])
        if m:
            a, j = brace_group(s, i + m.end())
            out.append(" " + a + " ")
            i = j
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


def normalize(text: str) -> str:
    """LaTeX and prose noise -> a plain expression string for the tokenizer."""
    if len(text) > MAX_CHARS:
        raise TooLarge(f"answer longer than {MAX_CHARS} characters")
    s = text.strip().strip("$").strip()
    s = re.sub(
        r"\\begin\{[pbvB]?matrix\}(.*?)\\end\{[pbvB]?matrix\}",
        lambda m: "⟦" + m.group(1) + "⟧",
        s,
        flags=re.S,
    )
    for a, b in (
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", " "),
        ("~", " "),
        ("\\{", "«"),
        ("\\}", "»"),
        ("\\lbrace", "«"),
        ("\\rbrace", "»"),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("\\div", "/"),
        ("\\%", "%"),
        ("\\$", ""),
        ("\\infty", " oo "),
        ("\\cup", " U "),
        ("\\pm", "±"),
        ("{,}", ""),
        ("\\le", "≤"),
        ("\\ge", "≥"),
        ("\\neq", "≠"),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\circ", ""),
        ("\\degree", ""),
        ("°", ""),
        ("\\quad", " "),
    ):
        s = s.replace(a, b)
    s = _replace_commands(s)
    s = re.sub(r"\\(" + "|".join(_GREEK) + r")\b", r" \1 ", s)
    s = s.replace("\\pi", " pi ")
    s = re.sub(r"\\(" + "|".join(sorted(_FUNCS, key=len, reverse=True)) + r")\b", r" \1 ", s)
    s = re.sub(r"\\[A-Za-z]+", " ", s)  # any other command is layout
    s = s.replace("{", "(").replace("}", ")")
    s = re.sub(r"(?<![A-Za-z])(" + _UNIT_WORDS + r")\s*(\^\s*\(?[23]\)?)?\s*$", "", s.strip())
    s = s.strip().rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # 1,000,000 is a thousands separator, not a list
        s = s.replace(",", "")
    return s


# ---------------------------------------------------------------- tokenizer + parser (text -> sympy)

_TOKEN = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|[A-Za-z]+|[-+*/^()\[\],!=|«»⟦⟧&%±≤≥≠<>]|\\\\)")


def tokenize(s: str) -> list[str]:
    tokens, i = [], 0
    s = s.rstrip()
    while i < len(s):
        m = _TOKEN.match(s, i)
        if not m:
            raise ParseError(f"unexpected character {s[i]!r}")
        tok = m.group(1)
        if tok.isalpha() and tok not in _FUNCS and tok not in _GREEK and tok not in ("pi", "oo", "U", "inf"):
            if len(tok) > 2:
                raise ParseError(f"word {tok!r} is text, not math")  # longer words: a text answer
            tokens.extend(tok)  # "xy" is x*y
            i = m.end()
            continue
        tokens.append(tok)
        i = m.end()
    return tokens


def _check_number(x):
    if isinstance(x, sympy.Integer) and x != 0 and math.log10(abs(int(x))) > MAX_RESULT_DIGITS:
        raise TooLarge("integer too large")
    return x


def _digits(x) -> float:
    """log10 of |x| for a nonzero sympy number, without computing anything large."""
    if isinstance(x, sympy.Integer):
        v = abs(int(x))
        return v.bit_length() * 0.30103
    if isinstance(x, sympy.Rational):
        return max(abs(int(x.p)).bit_length(), abs(int(x.q)).bit_length()) * 0.30103
    return 1.0


def _safe_pow(base, exp):
    if isinstance(exp, sympy.Number) and isinstance(base, sympy.Number):
        if base in (0, 1, -1):
            return sympy.Pow(base, exp)
        if (
            abs(float(exp)) > MAX_RESULT_DIGITS
            or abs(float(exp)) * max(_digits(base), 1e-3) > MAX_RESULT_DIGITS
        ):
            raise TooLarge("power too large")
    elif isinstance(exp, sympy.Number) and abs(float(exp)) > 1000:
        raise TooLarge("symbolic power too large")
    return sympy.Pow(base, exp)


_CONSTS = {"pi": sympy.pi, "oo": sympy.oo, "inf": sympy.oo, "infty": sympy.oo}
_FUNC_MAP = {
    "sqrt": sympy.sqrt,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "cot": sympy.cot,
    "sec": sympy.sec,
    "csc": sympy.csc,
    "log": sympy.log,
    "ln": sympy.log,
    "exp": sympy.exp,
    "arcsin": sympy.asin,
    "arccos": sympy.acos,
    "arctan": sympy.atan,
}
_CLOSE = {"(": ")", "[": "]", "«": "»", "⟦": "⟧"}


class _Parser:
    def __init__(self, tokens: list[str]):
        self.toks = tokens
        self.i = 0
        self.depth = 0

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ParseError(f"expected {expected!r}, found {tok!r}")
        self.i += 1
        return tok

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooLarge("nesting too deep")

    # top := item ("," item)* ; item := relation
    def top(self):
        items = self.seq_until(None)
        if self.peek() is not None:
            raise ParseError(f"unexpected {self.peek()!r}")
        return items[0] if len(items) == 1 else Seq("list", tuple(items))

    def seq_until(self, closer):
        items = [self.relation()]
        while self.peek() == ",":
            self.take(",")
            items.append(self.relation())
        if closer is not None and self.peek() not in closer:
            raise ParseError(f"expected one of {closer}, found {self.peek()!r}")
        return items

    def relation(self):
        lhs = self.union()
        if self.peek() == "=":
            self.take("=")
            return Equation(lhs, self.union())
        return lhs

    def union(self):
        left = self.expr()
        if self.peek() != "U":
            return left
        parts = [left]
        while self.peek() == "U":
            self.take("U")
            parts.append(self.expr())
        return Seq("set_union", tuple(parts))

    def expr(self):
        self.enter()
        left = self.term()
        while self.peek() in ("+", "-", "±"):
            op = self.take()
            right = self.term()
            if op == "±":
                left = Seq("set", (_arith(left, right, "+"), _arith(left, right, "-")))
            else:
                left = _arith(left, right, op)
        self.depth -= 1
        return left

    def starts_primary(self, tok) -> bool:
        return tok is not None and (tok[0].isdigit() or tok[0] == "." or tok.isalpha() or tok in ("(", "⟦"))

    def term(self):
        left = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "/"):
                self.take()
                left = _arith(left, self.unary(), tok)
            elif tok == "%":
                self.take()
                left = _Percent(left)
            elif self.starts_primary(tok) and tok != "U":
                left = _arith(left, self.power(), "*")  # implicit multiplication: 2x, 2\pi, 3(x+1)
            else:
                return left

    def unary(self):
        if self.peek() in ("-", "+"):
            op = self.take()
            self.enter()
            val = self.unary()
            self.depth -= 1
            return _arith(sympy.Integer(0), val, "-") if op == "-" else val
        return self.power()

    def power(self):
        base = self.postfix()
        if self.peek() == "^":
            self.take("^")
            self.enter()
            exp = self.unary()
            self.depth -= 1
            return _arith(base, exp, "^")
        return base

    def postfix(self):
        val = self.primary()
        while self.peek() == "!":
            self.take("!")
            if not (isinstance(val, sympy.Integer) and 0 <= val <= MAX_FACTORIAL):
                raise TooLarge("factorial of a large or non-integer value")
            val = sympy.factorial(val)
        return val

    def primary(self):
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        if tok[0].isdigit() or tok[0] == ".":
            self.take()
            if len(tok) > MAX_DIGITS:
                raise TooLarge("literal with too many digits")
            return sympy.Rational(tok) if "." in tok else sympy.Integer(tok)
        if tok in _FUNC_MAP:
            self.take()
            self.enter()
            arg = self.group_or_power()
            self.depth -= 1
            if not isinstance(arg, sympy.Basic):
                raise ParseError(f"{tok} of a non-expression")
            return _FUNC_MAP[tok](arg)
        if tok in _CONSTS:
            self.take()
            return _CONSTS[tok]
        if tok.isalpha():
            self.take()
            if tok == "i":
                return sympy.I
            if tok == "e":
                return sympy.E
            return sympy.Symbol(tok)
        if tok in ("(", "[", "«"):
            return self.bracketed()
        if tok == "|":
            self.take("|")
            self.enter()
            val = self.expr()
            self.depth -= 1
            self.take("|")
            return sympy.Abs(val)
        if tok == "⟦":
            return self.matrix()
        raise ParseError(f"unexpected {tok!r}")

    def group_or_power(self):
        if self.peek() == "(":
            return self.bracketed()
        return self.power()

    def bracketed(self):
        opener = self.take()
        self.enter()
        closers = ("»",) if opener == "«" else (")", "]")
        items = self.seq_until(closers)
        closer = self.take()
        self.depth -= 1
        if opener == "«":
            return Seq("set", tuple(items))
        if len(items) == 1 and opener + closer in ("()", "[]"):
            return items[0]
        if len(items) == 2 and (opener + closer != "()" or _has_infinity(items)):
            return Seq("interval", tuple(items), opener + closer)
        if opener + closer == "()":
            return Seq("tuple", tuple(items))
        return Seq("list", tuple(items), opener + closer)

    def matrix(self):
        self.take("⟦")
        rows, row = [], [self.expr()]
        while self.peek() in ("&", "\\\\"):
            sep = self.take()
            if sep == "&":
                row.append(self.expr())
            else:
                rows.append(row)
                row = [self.expr()] if self.peek() != "⟧" else []
        if row:
            rows.append(row)
        self.take("⟧")
        if len({len(r) for r in rows}) != 1:
            raise ParseError("ragged matrix")
        return sympy.Matrix(rows)


@dataclasses.dataclass(frozen=True)
class _Percent:
    value: object


def _has_infinity(items) -> bool:
    return any(isinstance(x, sympy.Basic) and x.has(sympy.oo) for x in items)


def _arith(a, b, op):
    if isinstance(a, _Percent):
        a = a.value / 100
    if isinstance(b, _Percent):
        b = b.value / 100
    if not (isinstance(a, sympy.Basic) and isinstance(b, sympy.Basic)):
        raise ParseError("arithmetic on a tuple, set or equation")
    if op == "+":
        return _check_number(a + b)
    if op == "-":
        return _check_number(a - b)
    if op == "*":
        if (
            isinstance(a, sympy.Number)
            and isinstance(b, sympy.Number)
            and _digits(a) + _digits(b) > MAX_RESULT_DIGITS
        ):
            raise TooLarge("product too large")
        return _check_number(a * b)
    if op == "/":
        if b == 0:
            raise ParseError("division by zero")
        return _check_number(a / b)
    return _check_number(_safe_pow(a, b))


def parse(text: str):
    """Answer text -> sympy expression, Seq, Equation, Matrix or _Percent. Raises ParseError."""
    s = normalize(text)
    if not s:
        raise ParseError("empty answer")
    parser = _Parser(tokenize(s))
    return parser.top()


def text_key(text: str) -> str:
    """Normalised text for answers that are words (multiple-choice letters, names, yes/no)."""
    s = normalize(text) if len(text) <= MAX_CHARS else text[:MAX_CHARS]
    s = s.lower().strip()
    s = re.sub(r"^\(?([a-e])\)$", r"\1", s)  # "(B)" -> "b"
    s = re.sub(r"[\s.:;!?\"'`]+", " ", s).strip()
    return s
