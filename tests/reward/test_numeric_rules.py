"""Numeric comparison rules of the math reward (docs/reward.md § Math accuracy, "Numbers").

Every wrong acceptance is a reward hack, every wrong rejection lost signal, so each rule has accept and
reject cases, at magnitudes from 1e-30 to 1e30. These call `mathcheck.answers_match` directly (no server):
the same function the accuracy reward and /equivalence use.
"""

import pytest

from r1jax.reward.mathcheck import answers_match

T, F = True, False
EXPONENTS = (-30, -20, -9, -6, -3, -1, 0, 1, 3, 6, 9, 20, 30)


def check(cases):
    wrong = []
    for pred, gold, expected in cases:
        got, how = answers_match(pred, gold)
        if got != expected:
            wrong.append((pred, gold, expected, got, how))
    assert not wrong, "\n".join(map(repr, wrong))


def tens(k: int) -> str:
    return f"10^{{{k}}}"


# ------------------------------------------------------------------------------------------- exact sides


def test_exact_sides_compare_exactly_at_every_magnitude():
    """Integers, rationals, powers of ten: no tolerance at all, however small or large the values."""
    cases = []
    for k in EXPONENTS:
        cases += [
            (f"7\\cdot {tens(k)}", f"7\\cdot {tens(k)}", T),
            (f"3\\cdot {tens(k)}", f"7\\cdot {tens(k)}", F),  # two different tiny (or huge) values
            (f"7\\cdot {tens(k)}", f"7\\cdot {tens(k)} + {tens(k - 12)}", F),
            (f"\\frac{{{tens(k)}}}{{3}}", f"\\frac{{1}}{{3}}\\cdot {tens(k)}", T),
            (f"\\frac{{{tens(k)}}}{{3}}", f"\\frac{{1}}{{3}}\\cdot {tens(k + 1)}", F),
            ("0", tens(k), F),  # "answer 0 for small probabilities" must never pay
            (tens(k), "0", F),  # nor a tiny value for 0
            (f"-{tens(k)}", tens(k), F),
        ]
    check(cases)


def test_the_issue_examples():
    check([
        ("0", "10^{-7}", F),
        ("0", "\\frac{1}{10^{9}}", F),
        ("0", "\\frac{1}{2^{40}}", F),
        ("3\\cdot 10^{-9}", "7\\cdot 10^{-9}", F),
        ("10^{-9}", "0", F),
        ("1000000.5", "1000000", F),
        ("3 4", "12", F),
        ("3 4", "34", F),
    ])


def test_surds_and_pi_expressions_are_exact():
    check([
        ("2\\sqrt{2}", "\\sqrt{8}", T),
        ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}", T),  # sympy proves it (denesting)
        ("\\frac{\\pi}{3}", "\\frac{2\\pi}{6}", T),
        ("\\pi \\cdot 10^{-30}", "\\frac{\\pi}{10^{30}}", T),
        ("\\pi \\cdot 10^{-30}", "\\pi \\cdot 10^{-30} + 10^{-60}", F),
        ("\\sqrt{2}", "\\sqrt{2} + 10^{-40}", F),
        ("\\frac{355}{113}", "\\pi", F),  # 7 correct digits, but an exact wrong value
        # a rational with 50 correct digits is still not pi (a rational is never an irrational value)
        ("\\frac{314159265358979323846264338327950288419716939937510582}{10^{53}}", "\\pi", F),
        ("\\frac{1414213562373095048801688724209698078569671875}{10^{45}}", "\\sqrt{2}", F),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", T),
        ("\\sin(\\pi/6)", "\\frac{1}{2}", T),
    ])


# ------------------------------------------------------------------------------------------- decimal answers


def test_decimal_answers_scale_with_the_gold_at_every_magnitude():
    """A decimal is accepted when it is the gold rounded to the decimal's last digit and carries about 7
    significant digits (|error| <= 1e-6 |gold|), at every scale, small values included."""
    cases = []
    for k in EXPONENTS:
        third = f"\\frac{{1}}{{3}}\\cdot {tens(k)}"  # 3.333...·10^(k-1)
        e = k - 1
        cases += [
            (f"3.333333\\cdot {tens(e)}", third, T),
            (f"3.3333333333\\times {tens(e)}", third, T),
            (f"-3.333333\\cdot {tens(e)}", f"-{third}", T),
            (f"3.333\\cdot {tens(e)}", third, F),  # too few digits for the tolerance
            (f"3.333334\\cdot {tens(e)}", third, F),  # last digit wrong (not the rounded value)
            (f"3.3333339\\cdot {tens(e)}", third, F),  # within 1e-6 relative, but the digits say 3.3333339
            (f"3.333333\\cdot {tens(e + 1)}", third, F),  # off by a power of ten
            (f"0.0\\cdot {tens(e)}", third, F),
        ]
    check(cases)


def test_plain_decimals_small_and_large():
    check([
        ("0.0000001", "10^{-7}", T),  # exactly equal
        ("0.0000000", "10^{-7}", F),
        ("0.000000", "10^{-7}", F),
        ("0.00000003333333", "\\frac{1}{3\\cdot 10^{7}}", T),
        ("0.00000003", "\\frac{1}{3\\cdot 10^{7}}", F),
        ("0.000000033", "\\frac{1}{3\\cdot 10^{7}}", F),
        ("333333333333333333333333333333.3", "\\frac{10^{30}}{3}", T),
        ("333333333333333333333333333333", "\\frac{10^{30}}{3}", F),  # integer vs non-integer: exact, differ
        ("333333300000000000000000000000.0", "\\frac{10^{30}}{3}", F),  # 7 digits then zeros: digits wrong
    ])


def test_digits_given_must_be_right():
    check([
        ("3.1415927", "\\pi", T),
        ("3.14159265358979", "\\pi", T),
        ("3.14159265359", "\\pi", T),
        ("3.1415926", "\\pi", F),  # truncated, not rounded: the last digit is wrong
        ("3.1415936", "\\pi", F),  # within 1e-6 relative, but the digits are wrong (today: accepted)
        ("3.14159265357", "\\pi", F),
        ("3.14", "\\pi", F),
        ("1.4142136", "\\sqrt{2}", T),
        ("1.4142135", "\\sqrt{2}", F),
        ("0.3333333", "\\frac{1}{3}", T),
        ("0.33333333333333333333", "\\frac{1}{3}", T),
        ("0.3333336", "\\frac{1}{3}", F),
        ("0.6666667", "\\frac{2}{3}", T),
        ("0.6666666", "\\frac{2}{3}", F),
        ("2.7182818", "e", T),
        ("2.7182819", "e", F),
        ("33.33333\\%", "\\frac{1}{3}", T),
        ("33.33\\%", "\\frac{1}{3}", F),
    ])


def test_decimal_golds():
    """A gold written as a decimal is a rounded value: the other side must round to it (at the coarser of
    the two decimals' last digits) and still agree to 1e-6 relative."""
    check([
        ("\\frac{1}{3}", "0.333333333", T),
        ("0.3333333", "0.333333333", T),
        ("0.3333333333", "0.3333333", T),  # more digits than the gold, consistent with it
        ("\\frac{1}{3}", "0.3", F),
        ("0.33", "0.3", F),
        ("0.3", "0.33", F),
        ("123456.8", "123456.7", F),  # the same precision must give the same digits
        ("123456.70", "123456.7", T),
        ("1.5", "1.50", T),
        ("7.0\\cdot 10^{-25}", "0.0000000000000000000000007", T),
        ("7.1\\cdot 10^{-25}", "0.0000000000000000000000007", F),
    ])


def test_integer_golds_need_exact_answers():
    """An integer gold (value an integer, however written) is matched only by that exact integer: no
    non-integer is close enough, whatever its digits."""
    cases = [
        ("1000000.5", "1000000", F),
        ("1000000.0000001", "1000000", F),
        ("999999.9999999", "1000000", F),
        ("1000000.0", "1000000", T),
        ("1.0\\cdot 10^{6}", "1000000", T),
        ("1.000000000001\\cdot 10^{30}", "10^{30}", F),
        ("1.0\\cdot 10^{30}", "10^{30}", T),
        ("1000000000000000000000000000001", "10^{30}", F),
        ("0.0", "0", T),
        ("-0", "0", T),
        ("0.0000000001", "0", F),
        ("-0.0000000000000000000000000001", "0", F),
        ("2.9999999", "3", F),
        ("3.00", "3.0", T),
        ("3.0000001", "3.0", F),  # "3.0" is an integer gold too
        ("2.0000000", "\\sqrt{4}", T),
        ("2.0000001", "\\sqrt{4}", F),
        ("2.5", "\\frac{5}{2}", T),
    ]
    for k in (0, 3, 9, 20, 30):
        n = 10**k
        cases += [(f"{n}.5", str(n), F), (f"{n}.0", str(n), T), (f"{n + 1}", str(n), F)]
    check(cases)


# ------------------------------------------------------------------------------------------- bare numbers


def test_adjacent_bare_numbers_never_multiply():
    check([
        ("3 4", "12", F),
        ("3 4", "34", F),
        ("2 3.5", "7", F),
        ("2^3 4", "32", F),
        ("2\\ 3", "6", F),
        ("3\\cdot 4", "12", T),  # explicit multiplication still works
        ("3(4)", "12", T),
        ("2\\pi", "2 \\pi", T),
        ("2x", "x+x", T),
    ])


def test_mixed_numbers():
    """An integer directly followed by a fraction of integers is a mixed number (2 3/4 = 11/4), as in
    dataset golds; anything else next to a fraction multiplies."""
    check([
        ("2\\frac{3}{4}", "\\frac{11}{4}", T),
        ("2\\frac{3}{4}", "\\frac{3}{2}", F),
        ("-2\\frac12", "-2.5", T),
        ("2\\frac{\\pi}{3}", "\\frac{2\\pi}{3}", T),
        ("x\\frac{1}{2}", "\\frac{x}{2}", T),
    ])


def test_thousands_separators_only_in_standard_forms():
    check([
        ("1,000", "1000", T),
        ("1,234,567", "1234567", T),
        ("1,234.5", "1234.5", T),
        ("-1,000", "-1000", T),
        ("1{,}000", "1000", T),
        ("1{,}000{,}000", "10^6", T),
        ("1\\,000", "1000", T),
        ("1\\,000\\,000", "1000000", T),
        ("1\\ 000", "1000", T),
        ("1 000 000", "1000000", T),
        ("\\$1,234", "1234", T),
        ("1,234 \\text{ dollars}", "1234", T),
        # not a thousands grouping: never silently joined into another number
        ("12\\,34", "1234", F),
        ("12{,}34", "1234", F),
        ("1{,}5", "15", F),  # a decimal comma is not read as 15
        ("1{,}5", "1.5", F),  # nor guessed as 1.5
        ("1\\,0000", "10000", F),
        ("1,0000", "10000", F),
        ("12,34", "1234", F),
        ("1 00", "100", F),
        ("1\\,000{,}000", "1000000", F),  # mixed separators
    ])


@pytest.mark.parametrize("pred", ["\\frac{1", "\\sqrt[3{8}", "{{{", "\\frac{a}", "1{,}5", "3 4"])
def test_malformed_answers_are_wrong_not_errors(pred):
    ok, how = answers_match(pred, "3")
    assert ok is False, how
