"""The math accuracy table (>= 100 cases) scored by the real server process, in one batch."""

import pytest


def box(x: str) -> str:
    return f"<think>Let me work it out step by step.</think> So the final answer is \\boxed{{{x}}}."


T, F = True, False
# (predicted answer inside \boxed{}, gold, equivalent?)
EQUIV = [
    # integers, signs, thousands separators, decimals, fractions
    ("42", "42", T),
    ("042", "42", T),
    ("-7", "-7", T),
    ("7", "-7", F),
    ("1,000", "1000", T),
    ("1{,}000", "1000", T),
    ("1,000,000", "10^6", T),
    ("3.0", "3", T),
    ("0.5", "\\frac{1}{2}", T),
    ("\\frac12", "0.5", T),
    ("\\dfrac{3}{4}", "0.75", T),
    ("\\tfrac{6}{8}", "\\frac34", T),
    ("2/4", "1/2", T),
    ("-\\frac{1}{3}", "\\frac{-1}{3}", T),
    ("0.333", "\\frac13", F),
    ("0.3333333", "\\frac13", T),
    ("1.4142136", "\\sqrt2", T),
    ("1.41", "\\sqrt{2}", F),
    ("3.14", "\\pi", F),
    ("3.14159265", "\\pi", T),
    ("\\frac{22}{7}", "\\pi", F),
    ("1/3", "0.3", F),
    ("10", "100", F),
    ("1e3", "1000", F),
    # percent
    ("50\\%", "50", T),
    ("50\\%", "0.5", T),
    ("50\\%", "5", F),
    ("12.5\\%", "\\frac18", T),
    # roots, pi, powers, factorials
    ("2\\sqrt{2}", "\\sqrt{8}", T),
    ("\\sqrt{8}", "2\\sqrt2", T),
    ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}", T),
    ("\\sqrt[3]{27}", "3", T),
    ("3\\sqrt{3}", "\\sqrt{27}", T),
    ("2\\sqrt{3}", "3\\sqrt{2}", F),
    ("\\frac{\\pi}{2}", "\\pi/2", T),
    ("2\\pi", "2 \\pi", T),
    ("\\pi^2", "\\pi \\cdot \\pi", T),
    ("\\pi", "180", F),
    ("2^{10}", "1024", T),
    ("2^10", "1024", T),
    ("5!", "120", T),
    ("4!", "25", F),
    ("e^{i\\pi}", "-1", T),
    ("\\ln(e^2)", "2", T),
    ("\\sin(\\pi/6)", "1/2", T),
    ("\\cos 0", "1", T),
    ("|-3|", "3", T),
    ("\\left(\\frac{1}{2}\\right)^2", "\\frac14", T),
    # symbolic expressions
    ("x^2+2x+1", "(x+1)^2", T),
    ("(x+1)(x-1)", "x^2-1", T),
    ("2x", "x+x", T),
    ("x^2", "x^3", F),
    ("\\frac{x}{2}", "0.5x", T),
    ("a+b", "b+a", T),
    ("a-b", "b-a", F),
    ("2(x+3)", "2x+6", T),
    ("\\frac{1}{x}", "x^{-1}", T),
    ("\\sqrt{x^2}", "x", F),
    ("xy", "yx", T),
    ("x", "y", F),
    # sets, tuples, intervals, matrices, lists
    ("\\{1,2,3\\}", "\\{3,2,1\\}", T),
    ("\\{1,2\\}", "\\{1,2,3\\}", F),
    ("(1,2)", "(1,2)", T),
    ("(1,2)", "(2,1)", F),
    ("(1, -2)", "(1,-2)", T),
    ("(\\frac12, 3)", "(0.5, 3)", T),
    ("[0,1]", "[0, 1]", T),
    ("[0,1)", "[0,1]", F),
    ("(0,\\infty)", "(0, \\infty)", T),
    ("(-\\infty, 2]", "(-\\infty,2]", T),
    ("[2,\\infty)", "(2,\\infty)", F),
    ("(-\\infty,0)\\cup(1,\\infty)", "(-\\infty, 0) \\cup (1, \\infty)", T),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", T),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}", F),
    ("\\begin{bmatrix}\\frac12\\\\2\\end{bmatrix}", "\\begin{pmatrix}0.5\\\\2\\end{pmatrix}", T),
    ("2, 3", "3, 2", T),
    ("2, 3", "2", F),
    ("1, 2, 3", "1, 2", F),
    # equations
    ("x=3", "3", T),
    ("x = -2", "-2", T),
    ("y=2x+3", "y=3+2x", T),
    ("y = 2x + 3", "2x - y + 3 = 0", T),
    ("y=2x+3", "y=2x-3", F),
    ("3", "x=3", T),
    ("x=4", "3", F),
    # text answers, units, degrees, dollars
    ("\\text{(B)}", "B", T),
    ("B", "(B)", T),
    ("C", "B", F),
    ("\\text{yes}", "Yes", T),
    ("no", "yes", F),
    ("10\\text{ cm}", "10", T),
    ("10 \\text{cm}^2", "10", T),
    ("45^\\circ", "45", T),
    ("45^{\\circ}", "45", T),
    ("\\$5", "5", T),
    ("5 \\text{ dollars}", "5", T),
    ("12 \\mbox{ meters}", "12", T),
    ("\\text{Tuesday}", "Tuesday", T),
    ("\\textbf{7}", "7", T),
    ("\\displaystyle 7", "7", T),
    ("7.", "7", T),
    ("$7$", "7", T),
    # complex numbers
    ("1+i", "i+1", T),
    ("1-i", "1+i", F),
    ("i^2", "-1", T),
    # more near misses
    ("\\frac{1}{2}", "\\frac{2}{1}", F),
    ("\\{1,2\\}", "(1,2)", F),
    ("0", "\\infty", F),
    ("\\infty", "-\\infty", F),
    ("\\sqrt{2}", "2", F),
    ("-\\frac{1}{2}", "\\frac{1}{2}", F),
    # numeric rules (tests/reward/test_numeric_rules.py has the full set, 1e-30 .. 1e30)
    ("0", "10^{-7}", F),
    ("3\\cdot 10^{-9}", "7\\cdot 10^{-9}", F),
    ("10^{-9}", "0", F),
    ("1000000.5", "1000000", F),
    ("3 4", "12", F),
    ("3.333333\\cdot 10^{-31}", "\\frac{1}{3}\\cdot 10^{-30}", T),
    ("3.333\\cdot 10^{-31}", "\\frac{1}{3}\\cdot 10^{-30}", F),
    ("3.1415936", "\\pi", F),
    ("12\\,34", "1234", F),
    ("1\\,000\\,000", "10^6", T),
    # answer forms (tests/reward/test_equivalence_breadth.py has the full set)
    ("(4,1)", "(a,b)=(4,1)", T),
    ("(1,4)", "(a,b)=(4,1)", F),
    ("(a,b)=(4,1)", "(a,b)=(4,1)", T),
    ("2", "g(x)=2", T),
    ("x > 2", "2 < x", T),
    ("x \\geq 2", "x > 2", F),
    ("x\\in[0,3)", "0 \\le x < 3", T),
    ("\\cos^2 t", "1 - \\sin^2 t", T),
    ("\\log^2 x", "\\log(x^2)", F),
    ("x = 2 + 3 = 5", "5", T),
    ("\\frac{1}{3} \\approx 0.333", "\\frac{1}{3}", T),
    ("50 \\text{ percent}", "0.5", T),
]

# (full completion, gold, template, expected status, expected reward)
STRUCTURE = [
    # hedging scores 0
    ("</think> \\boxed{3} or maybe \\boxed{4}", "3", "r1", "wrong", 0.0),
    ("</think> \\boxed{3 \\text{ or } 4}", "3", "r1", "wrong", 0.0),
    ("</think> \\boxed{A, B, C, D}", "B", "r1", "wrong", 0.0),
    ("</think> \\boxed{}", "3", "r1", "no_answer", 0.0),
    ("<think>the answer is \\boxed{3}</think> I am not sure.", "3", "r1", "no_answer", 0.0),
    ("<think>the answer is \\boxed{3} and I keep thinking", "3", "r1", "no_answer", 0.0),
    ("</think> \\boxed{3} and again \\boxed{3}", "3", "r1", "ok", 1.0),
    ("no box at all, the answer is 3", "3", "r1", "no_answer", 0.0),
    ("\\boxed{3}", "3", "r1", "ok", 1.0),  # no reasoning block: the whole text is the answer region
    ("</think> \\boxed{\\frac{1}{\\boxed{2}}}", "1/2", "r1", "ok", 1.0),  # nested braces matched
    # R1-Zero template: the answer block
    (" 1+2=3 </think> <answer> 3 </answer>", "3", "r1_zero", "ok", 1.0),
    ("<think> 1+2=3 </think> <answer> \\boxed{3} </answer>", "3", "r1_zero", "ok", 1.0),
    (" 1+2=3 </think> <answer> 4 </answer>", "3", "r1_zero", "wrong", 0.0),
    (" 1+2=3 </think> the answer is 3", "3", "r1_zero", "no_answer", 0.0),
    (" 1+2 </think> <answer>5</answer> <answer>3</answer>", "3", "r1_zero", "ok", 1.0),  # last block counts
    (" x </think> <answer>3 or 4</answer>", "3", "r1_zero", "wrong", 0.0),
    # magnitude bombs are refused quickly instead of computed
    ("</think> \\boxed{9^{9^{9^{9}}}}", "1", "r1", "wrong", 0.0),
    ("</think> \\boxed{100000!}", "1", "r1", "wrong", 0.0),
    ("</think> \\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", "1", "r1", "wrong", 0.0),
    ("</think> \\boxed{" + "9" * 5000 + "}", "1", "r1", "wrong", 0.0),
]


def test_table_is_large_enough():
    assert len(EQUIV) + len(STRUCTURE) >= 100
    assert sum(1 for *_, eq in EQUIV if not eq) >= 30  # plenty of tricky non-equivalents


@pytest.fixture(scope="module")
def table_results(client):
    items = [{"completion": box(p), "task": "math", "answer": g, "template": "r1"} for p, g, _ in EQUIV]
    items += [{"completion": c, "task": "math", "answer": g, "template": t} for c, g, t, _, _ in STRUCTURE]
    return client.score(items)


def test_equivalence_table(table_results):
    wrong = []
    for k, (pred, gold, eq) in enumerate(EQUIV):
        got = table_results.rewards[k]
        status = table_results.status[k]
        if got != float(eq) or status != ("ok" if eq else "wrong"):
            wrong.append((pred, gold, eq, float(got), status, table_results.details[k]))
    assert not wrong, "\n".join(map(repr, wrong))


def test_structure_and_hedging(table_results):
    off = len(EQUIV)
    wrong = []
    for k, (comp, gold, tmpl, status, reward) in enumerate(STRUCTURE):
        got_s, got_r = table_results.status[off + k], float(table_results.rewards[off + k])
        if (got_s, got_r) != (status, reward):
            wrong.append(
                (comp[:60], gold, tmpl, status, reward, got_s, got_r, table_results.details[off + k])
            )
    assert not wrong, "\n".join(map(repr, wrong))
    assert table_results.valid.all()
