"""A safe parser from LaTeX / plain-text math answers to sympy objects (never eval, never sympify).

Model text goes through a hand-written tokenizer and recursive-descent parser that builds sympy
objects node by node, so nothing in the text is ever executed. Magnitudes are screened before each
node is built (digit counts, huge powers, factorials, nesting depth): sympy evaluates integer powers
eagerly in C, which no signal can interrupt. The worker deadline (SIGKILL) is the backstop.

Parsed values are sympy expressions plus these containers (compared by mathcheck.equivalent):
  DecimalNumber(value, unit)   a number written with a decimal point, optionally signed and scaled by a
                               power of ten (-3.25\\cdot 10^{-9}); the only values compared with a tolerance
  Percent(value)               p\\% (equal to p or p/100)
  Seq(kind, items, brackets)   kind "tuple" (a, b), "list" a, b, "set" \\{a, b\\}, "interval" [a, b),
                               "set_union" A \\cup B, "matrix" (items are "row" Seqs)
  Labelled(label, ...)         x = v, f(x) = v, (a, b) = (4, 1), x \\in S, x > 2 (as x in (2, oo))
  Chain(sides, ops)            A = B, A = B = C, A \\approx d (an equation, or a computation that ends in
                               its answer)
  Inequality(expr, strict)     expr > 0 or expr >= 0, for inequalities that do not bound one variable
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
    kind: str  # "tuple" | "list" | "set" | "interval" | "set_union" | "matrix" | "row"
    items: tuple
    brackets: str = ""


@dataclasses.dataclass(frozen=True)
class DecimalNumber:
    """A number written with a decimal point: its exact value and one unit in its last written digit
    (3.140 -> value 157/50, unit 1/1000; -2.5\\cdot 10^{-9} -> value -1/(4*10^8), unit 10^{-10})."""

    value: sympy.Rational
    unit: sympy.Rational


@dataclasses.dataclass(frozen=True)
class Percent:
    value: object


@dataclasses.dataclass(frozen=True)
class Labelled:
    """`label = value` (or `label \\in value`, or an inequality bounding one variable). The label is a
    variable (x, a_1, \\theta), a tuple of distinct variables ((a,b)) or a function application (f(x),
    P(A)); it names the answer and is not part of it."""

    label: str  # canonical text: "x", "a_1", "(a,b)", "f(x)"
    names: tuple  # the variable names of a variable or tuple label, in order; () for f(x)
    label_expr: object  # the label as a value (Symbol or Seq of Symbols) for equation comparisons; None for f(x)
    value: object


@dataclasses.dataclass(frozen=True)
class Chain:
    """Sides joined by "=" or "≈" (ops[k] joins sides[k] and sides[k+1])."""

    sides: tuple
    ops: tuple


@dataclasses.dataclass(frozen=True)
class Inequality:
    expr: object  # expr > 0 (strict) or expr >= 0
    strict: bool


# ---------------------------------------------------------------- LaTeX normalisation (text -> text)

_UNIT_WORDS = (
    "degrees?|cm|mm|km|m|meters?|centimeters?|inches|inch|feet|foot|ft|units?|sq|square|cubic|dollars?|cents?|"
    "hours?|minutes?|seconds?|days?|years?|kg|g|grams?|pounds?|miles?|mph|liters?|ml"
)
_GREEK = ("alpha beta gamma delta epsilon theta lambda mu nu rho sigma tau phi chi psi omega").split()
_FUNCS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "arcsin", "arccos", "arctan"}

_FRAC = re.compile(r"\\(d|t|c)?frac")
_SQRT = re.compile(r"\\sqrt")
_TEXT = re.compile(r"\\(textbf|textit|textrm|text|mathrm|mathbf|mbox|operatorname)(?![A-Za-z])\s*")
_COMMAND = re.compile(r"\\[A-Za-z]+")

# Thousands separators, standard forms only: groups of exactly three digits after a first group of one to
# three, all joined by the same LaTeX separator ({,}  \,  \thinspace  "\ "  or a Unicode thin space). A
# comma or a plain space joins groups only when the whole answer is that one number (see normalize).
_SEP = r"(?:\{,\}|\\,|\\thinspace(?![A-Za-z])\s*|\\ |\u2009|\u202f)"
_GROUPED_NUMBER = re.compile(r"(?<![\d.])\d{1,3}(" + _SEP + r")\d{3}(?:\1\d{3})*(?!\d)")
_SPLIT_DIGITS = re.compile(r"\d\s*" + _SEP + r"\s*\d")
_SEP_ONLY = re.compile(_SEP)
# An integer directly followed by a fraction of two integers is a mixed number (2\frac{3}{4} = 11/4): the
# form dataset golds use. Not after a letter, "^" or "_" (x2\frac12, 2^2\frac12 stay products).
_MIXED_NUMBER = re.compile(
    r"(?<![\d.^_A-Za-z])(\d+)\s*\\[dt]?frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))"
)
_RELATIONS = (
    (re.compile(r"\\(?:leqslant|leq|le)(?![A-Za-z])"), "≤"),
    (re.compile(r"\\(?:geqslant|geq|ge)(?![A-Za-z])"), "≥"),
    (re.compile(r"\\(?:neq|ne)(?![A-Za-z])"), "≠"),
    (re.compile(r"\\lt(?![A-Za-z])"), "<"),
    (re.compile(r"\\gt(?![A-Za-z])"), ">"),
    (re.compile(r"\\approx(?![A-Za-z])"), "≈"),
    (re.compile(r"\\in(?![A-Za-z])"), "∈"),
)


def brace_group(s: str, i: int) -> tuple[str, int]:
    """Returns the argument starting at s[i] ({...} or one character) and the index after it."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ParseError("missing argument")
    if s[i] != "{":
        if s[i] == "\\":
            m = _COMMAND.match(s, i)
            if m:
                return s[i : m.end()], m.end()
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
        if s[i] != "\\":
            out.append(s[i])
            i += 1
            continue
        m = _FRAC.match(s, i)
        if m:
            a, j = brace_group(s, m.end())
            b, j = brace_group(s, j)
            out.append(f"(({_replace_commands(a)})/({_replace_commands(b)}))")
            i = j
            continue
        m = _SQRT.match(s, i)
        if m:
            j = m.end()
            index = None
            if j < len(s) and s[j] == "[":
                k = s.find("]", j)
                if k < 0:
                    raise ParseError("unbalanced [ in \\sqrt")
                index, j = s[j + 1 : k], k + 1
            a, j = brace_group(s, j)
            inner = _replace_commands(a)
            out.append(f"sqrt({inner})" if index is None else f"(({inner})^(1/({_replace_commands(index)})))")
            i = j
            continue
        m = _TEXT.match(s, i)
        if m:
            a, j = brace_group(s, m.end())
            out.append(" " + a + " ")
            i = j
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


def _join_digit_groups(s: str) -> str:
    """1\\,000\\,000 -> 1000000. Digits split by such a separator in any other way (12\\,34, the decimal comma
    1{,}5, mixed separators) are refused: joining them would silently make another number."""
    s = _GROUPED_NUMBER.sub(lambda m: _SEP_ONLY.sub("", m.group(0)), s)
    bad = _SPLIT_DIGITS.search(s)
    if bad:
        raise ParseError(f"digits split by a separator that is not a thousands grouping: {bad.group(0)!r}")
    return s


def _mixed_number(m: re.Match) -> str:
    whole, num, den = m.group(1), m.group(2) or m.group(3), m.group(4) or m.group(5)
    return f"({whole}+{num}/{den})"


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
    s = _join_digit_groups(s)  # before "\," and "{,}" are dropped below
    s = _MIXED_NUMBER.sub(_mixed_number, s)
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
    for pattern, symbol in _RELATIONS:
        s = pattern.sub(f" {symbol} ", s)
    s = _replace_commands(s)
    # (?![A-Za-z]), not \b: "_" is a word character, and \theta_1, \log_2 must keep their names
    s = re.sub(r"\\(" + "|".join(_GREEK) + r")(?![A-Za-z])", r" \1 ", s)
    s = s.replace("\\pi", " pi ")
    s = re.sub(r"\\(" + "|".join(sorted(_FUNCS, key=len, reverse=True)) + r")(?![A-Za-z])", r" \1 ", s)
    s = _COMMAND.sub(" ", s)  # any other command is layout
    s = s.replace("{", "(").replace("}", ")")
    s = re.sub(r"(?<![A-Za-z])percent\s*$", "%", s.strip())  # "50 percent", "50\text{ percent}"
    s = re.sub(r"(?<![A-Za-z])(" + _UNIT_WORDS + r")\s*(\^\s*\(?[23]\)?)?\s*$", "", s.strip())
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^[=≈]\s*", "", s)  # "= 5", "\approx 3.14": the answer is what follows
    # A comma or a plain space is a thousands separator only when the whole answer is one grouped number
    # (1,000,000); anywhere else a comma separates list items and a space separates tokens.
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    elif re.fullmatch(r"-?\d{1,3}( \d{3})+(\.\d+)?", s):
        s = s.replace(" ", "")
    return s


# ---------------------------------------------------------------- tokenizer + parser (text -> sympy)

_TOKEN = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|[A-Za-z]+|[-+*/^()\[\],!=|«»⟦⟧&%±≤≥≠<>≈∈_]|\\\\)")
# x_1, a_{10}, x_n: a subscript makes one variable name (a single letter or a braced run of letters/digits)
_SUBSCRIPT = re.compile(r"\s*_\s*(\d+|[A-Za-z]|\(\s*[A-Za-z0-9]+\s*\))")
_NAME = re.compile(r"[A-Za-z]+(?:_[A-Za-z0-9]+)?")
_CONSTS = {"pi": sympy.pi, "oo": sympy.oo, "inf": sympy.oo, "infty": sympy.oo}
_NOT_VARIABLES = _FUNCS | set(_CONSTS) | {"U", "i", "e"}


def tokenize(s: str) -> list[str]:
    tokens, i = [], 0
    s = s.rstrip()
    while i < len(s):
        m = _TOKEN.match(s, i)
        if not m:
            raise ParseError(f"unexpected character {s[i]!r}")
        tok = m.group(1)
        i = m.end()
        if tok.isalpha() and tok not in _FUNCS and tok not in _GREEK and tok not in _CONSTS and tok != "U":
            if len(tok) > 2:
                raise ParseError(f"word {tok!r} is text, not math")  # longer words: a text answer
            names = list(tok)  # "xy" is x*y
        else:
            names = [tok]
        if tok.isalpha() and tok not in _FUNCS:  # a subscript names a variable; after log it is a base
            sub = _SUBSCRIPT.match(s, i)
            if sub:
                names[-1] += "_" + re.sub(r"[()\s]", "", sub.group(1))
                i = sub.end()
        tokens.extend(names)
    return tokens


def _is_number_token(tok) -> bool:
    return tok is not None and (tok[0].isdigit() or tok[0] == ".")


def _is_variable_token(tok) -> bool:
    return tok is not None and bool(_NAME.fullmatch(tok)) and tok not in _NOT_VARIABLES


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
# \sin^{-1} x is arcsin x (the convention for trigonometric functions); any other power is a power
_INVERSE = {"sin": sympy.asin, "cos": sympy.acos, "tan": sympy.atan, "cot": sympy.acot, "sec": sympy.asec,
            "csc": sympy.acsc}
_INEQUALITY_OPS = ("<", ">", "≤", "≥")


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

    # relation := label ("=" | "≈") chain | union ("∈" union | (ineq union){1,2} | (("=" | "≈") union)*)
    def relation(self):
        function_label = self.function_label()
        if function_label is not None:
            self.take()  # the "=" or "≈" after the label
            return Labelled(function_label, (), None, self.chain_value())
        first = self.union()
        tok = self.peek()
        if tok == "∈":
            label = _label_of(first)
            if label is None:
                raise ParseError("'∈' needs a variable or a tuple of variables on its left")
            self.take()
            return Labelled(*label, self.union())
        if tok in _INEQUALITY_OPS:
            return self.inequality(first)
        if tok not in ("=", "≈"):
            return first
        label = _label_of(first)
        op = self.take()
        if label is not None:
            return Labelled(*label, self.chain_value())
        rest = self.chain_value()
        if isinstance(rest, Chain):
            return Chain((first, *rest.sides), (op, *rest.ops))
        return Chain((first, rest), (op,))

    def chain_value(self):
        """side (("=" | "≈") side)*: one side is the value itself, more make a Chain."""
        sides, ops = [self.union()], []
        while self.peek() in ("=", "≈"):
            ops.append(self.take())
            sides.append(self.union())
        if self.peek() in _INEQUALITY_OPS or self.peek() == "∈":
            raise ParseError(f"{self.peek()!r} after an equation: mixed relations are not an answer")
        return sides[0] if len(sides) == 1 else Chain(tuple(sides), tuple(ops))

    def function_label(self) -> str | None:
        """f(x), P(A), g(x, y), f(3) followed by "=" or "≈": consumed and returned as label text. Only this
        exact token shape, since f(x) anywhere else is the product f*x."""
        t, i = self.toks, self.i
        if not (i + 1 < len(t) and _is_variable_token(t[i]) and t[i + 1] == "("):
            return None
        j, args = i + 2, []
        while j < len(t) and (_is_variable_token(t[j]) or _is_number_token(t[j])):
            args.append(t[j])
            j += 1
            if j < len(t) and t[j] == ",":
                j += 1
                continue
            break
        if not args or j + 1 >= len(t) or t[j] != ")" or t[j + 1] not in ("=", "≈"):
            return None
        self.i = j + 1
        return f"{t[i]}({','.join(args)})"

    def inequality(self, first):
        """a < b, a <= b < c, ... -> Labelled(x, interval) when one side is a lone variable bounded by
        values without it (x > 2 is x in (2, oo)); otherwise Inequality(bigger - smaller, strict)."""
        sides, ops = [exact_value(first)], []
        while self.peek() in _INEQUALITY_OPS:
            ops.append(self.take())
            sides.append(exact_value(self.union()))
        if len(sides) > 3:
            raise ParseError("more than two inequality signs")
        if self.peek() in ("=", "≈", "∈"):
            raise ParseError(f"{self.peek()!r} after an inequality: mixed relations are not an answer")
        if not all(isinstance(x, sympy.Expr) for x in sides):
            raise ParseError("an inequality between non-numbers")
        if all(op in (">", "≥") for op in ops):  # read every chain left to right as increasing
            sides, ops = sides[::-1], ["<" if op == ">" else "≤" for op in ops[::-1]]
        elif not all(op in ("<", "≤") for op in ops):
            raise ParseError("an inequality chain that changes direction")
        opening = ["(" if op == "<" else "[" for op in ops]
        closing = [")" if op == "<" else "]" for op in ops]
        if len(sides) == 3:
            lo, var, hi = sides
            label = _label_of(var)
            if label is None or var in lo.free_symbols or var in hi.free_symbols:
                raise ParseError("a double inequality must bound one variable")
            return Labelled(*label, Seq("interval", (lo, hi), opening[0] + closing[1]))
        lo, hi = sides
        if _label_of(hi) is not None and isinstance(hi, sympy.Symbol) and hi not in lo.free_symbols:
            return Labelled(*_label_of(hi), Seq("interval", (lo, sympy.oo), opening[0] + ")"))
        if _label_of(lo) is not None and isinstance(lo, sympy.Symbol) and lo not in hi.free_symbols:
            return Labelled(*_label_of(lo), Seq("interval", (-sympy.oo, hi), "(" + closing[0]))
        return Inequality(_arith(hi, lo, "-"), ops[0] == "<")

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
        return tok is not None and (tok[0].isdigit() or tok[0] == "." or tok[0].isalpha() or tok in ("(", "⟦"))

    def term(self):
        left = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "/"):
                self.take()
                left = _arith(left, self.unary(), tok)
            elif tok == "%":
                self.take()
                left = Percent(left)
            elif self.starts_primary(tok) and tok != "U":
                if _is_number_token(tok) and _is_number_token(self.toks[self.i - 1]):
                    # "3 4" is not 12 (nor 34, nor a list): two bare numbers side by side are refused
                    raise ParseError(f"two numbers side by side: {self.toks[self.i - 1]!r} {tok!r}")
                left = _arith(left, self.power(), "*")  # implicit multiplication: 2x, 2\pi, 3(x+1)
            else:
                return left

    def unary(self):
        if self.peek() == "±":  # \pm 2 is the set {2, -2}
            self.take()
            self.enter()
            val = self.unary()
            self.depth -= 1
            return Seq("set", (val, _negate(val)))
        if self.peek() in ("-", "+"):
            op = self.take()
            self.enter()
            val = self.unary()
            self.depth -= 1
            return _negate(val) if op == "-" else val
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
            val = exact_value(val)
            if not (isinstance(val, sympy.Integer) and 0 <= val <= MAX_FACTORIAL):
                raise TooLarge("factorial of a large or non-integer value")
            val = sympy.factorial(val)
        return val

    def primary(self):
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        if _is_number_token(tok):
            self.take()
            if len(tok) > MAX_DIGITS:
                raise TooLarge("literal with too many digits")
            if "." in tok:
                decimals = len(tok) - tok.index(".") - 1
                return DecimalNumber(sympy.Rational(tok), sympy.Rational(1, 10**decimals))
            return sympy.Integer(tok)
        if tok in _FUNC_MAP:
            return self.function()
        if tok in _CONSTS:
            self.take()
            return _CONSTS[tok]
        if _NAME.fullmatch(tok):
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
            val = exact_value(self.expr())
            self.depth -= 1
            self.take("|")
            return sympy.Abs(val)
        if tok == "⟦":
            return self.matrix()
        raise ParseError(f"unexpected {tok!r}")

    def function(self):
        """f x, f(x), f^2 x (= (f x)^2), \\sin^{-1} x (= arcsin x), \\log_b x (= log x / log b)."""
        name = self.take()
        self.enter()
        base = exponent = None
        if name == "log" and self.peek() == "_":
            self.take("_")
            base = exact_value(self.primary())
        if self.peek() == "^":
            self.take("^")
            negative = self.peek() == "-"
            if negative:
                self.take("-")
            exponent = exact_value(self.primary())
            exponent = _negate(exponent) if negative else exponent
        arg = exact_value(self.group_or_power())
        self.depth -= 1
        if not isinstance(arg, sympy.Basic) or (base is not None and not isinstance(base, sympy.Basic)):
            raise ParseError(f"{name} of a non-expression")
        if exponent is not None and exponent == -1 and name in _INVERSE:
            return _INVERSE[name](arg)
        value = sympy.log(arg, base) if base is not None else _FUNC_MAP[name](arg)
        return value if exponent is None else _arith(value, exponent, "^")

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
        return Seq("matrix", tuple(Seq("row", tuple(r)) for r in rows))


def _label_of(value):
    """(label, names, label_expr) when `value` can be a label: a variable or a tuple of distinct variables."""
    if isinstance(value, sympy.Symbol):
        return str(value), (str(value),), value
    if (
        isinstance(value, Seq)
        and value.kind == "tuple"
        and all(isinstance(x, sympy.Symbol) for x in value.items)
        and len(set(value.items)) == len(value.items)
    ):
        names = tuple(str(x) for x in value.items)
        return "(" + ",".join(names) + ")", names, value
    return None


def _has_infinity(items) -> bool:
    return any(isinstance(x, sympy.Basic) and x.has(sympy.oo) for x in items)


def exact_value(value):
    """The exact value behind a DecimalNumber (other values unchanged)."""
    return value.value if isinstance(value, DecimalNumber) else value


def _is_power_of_ten(x) -> bool:
    if not (isinstance(x, sympy.Rational) and x > 0):
        return False
    n = int(x.p) if x.q == 1 else int(x.q) if x.p == 1 else 0
    digits = str(n)
    return n > 0 and digits[0] == "1" and set(digits[1:]) <= {"0"}


def scaled(value, factor):
    """value * factor for a number (a DecimalNumber keeps its digits); None for anything else."""
    if isinstance(value, DecimalNumber):
        return DecimalNumber(value.value * factor, value.unit * abs(factor))
    if isinstance(value, sympy.Basic):
        return value * factor
    return None


def _negate(value):
    if isinstance(value, DecimalNumber):
        return DecimalNumber(-value.value, value.unit)
    return _arith(sympy.Integer(0), value, "-")


def _arith(a, b, op):
    # A decimal times or over a power of ten stays a decimal (3.25\cdot 10^{-9} has the digits of 3.25);
    # any other arithmetic makes its decimals exact rationals (1.5\pi is 3\pi/2, compared exactly).
    if op in ("*", "/") and isinstance(a, DecimalNumber) and _is_power_of_ten(b):
        return scaled(a, b if op == "*" else 1 / b)
    if op == "*" and isinstance(b, DecimalNumber) and _is_power_of_ten(a):
        return scaled(b, a)
    a, b = _as_exact_number(a), _as_exact_number(b)
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


def _as_exact_number(value):
    if isinstance(value, Percent):
        value = _as_exact_number(value.value) / 100
    value = exact_value(value)
    if not isinstance(value, sympy.Basic):
        raise ParseError("arithmetic on a tuple, set, relation or equation")
    return value


def parse(text: str):
    """Answer text -> sympy expression or one of the containers above. Raises ParseError."""
    s = normalize(text)
    if not s:
        raise ParseError("empty answer")
    parser = _Parser(tokenize(s))
    return parser.top()


def text_key(text: str) -> str:
    """Normalised text for answers that are words (multiple-choice letters, names, yes/no). Never raises:
    text that does not even normalise (unbalanced braces, a decimal comma) is compared as written."""
    try:
        s = normalize(text) if len(text) <= MAX_CHARS else text[:MAX_CHARS]
    except ParseError:
        s = text[:MAX_CHARS]
    s = s.lower().strip()
    s = re.sub(r"^\(?([a-e])\)$", r"\1", s)  # "(B)" -> "b"
    s = re.sub(r"[\s.:;!?\"'`]+", " ", s).strip()
    return s
