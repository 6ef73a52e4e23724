"""Answer forms that real dataset golds use (docs/reward.md § Math accuracy, "Forms"): each with accept and
reject cases. A rejected right answer is lost signal; an accepted wrong one is a reward hack."""

from r1jax.reward.mathcheck import answers_match, verify_math

T, F = True, False


def check(cases):
    wrong = []
    for pred, gold, expected in cases:
        got, how = answers_match(pred, gold)
        if got != expected:
            wrong.append((pred, gold, expected, got, how))
    assert not wrong, "\n".join(map(repr, wrong))


def test_labelled_answers():
    check([
        # a labelled gold against the bare value, and the other way round
        ("(4,1)", "(a,b)=(4,1)", T),
        ("(1,4)", "(a,b)=(4,1)", F),
        ("(a,b)=(4,1)", "(4,1)", T),
        ("(a,b)=(1,4)", "(4,1)", F),
        ("2", "g(x)=2", T),
        ("3", "g(x)=2", F),
        ("g(x)=2", "2", T),
        ("f(3) = 10", "10", T),
        ("P(A)=\\frac{3}{8}", "\\frac38", T),
        ("P(A)=\\frac{3}{8}", "\\frac58", F),
        ("x^2+1", "f(x)=x^2+1", T),
        ("x^2-1", "f(x)=x^2+1", F),
        ("a_1 = 5", "5", T),
        ("a_{10} = 5", "5", T),
        ("x_1 = 5", "6", F),
        # labelled on both sides: the labels must agree
        ("(a,b)=(4,1)", "(a,b)=(4,1)", T),
        ("(a,b)=(1,4)", "(a,b)=(4,1)", F),
        ("(b,a)=(1,4)", "(a,b)=(4,1)", T),  # the same assignment, listed in another order
        ("(b,a)=(4,1)", "(a,b)=(4,1)", F),
        ("(x,y)=(4,1)", "(a,b)=(4,1)", F),
        ("g(x)=2", "g(x)=2", T),
        ("g(x)=3", "g(x)=2", F),
        ("h(x)=2", "g(x)=2", F),
        ("x=3", "x=3", T),
        ("y=3", "x=3", F),
        ("S=\\{1,2\\}", "S=\\{2,1\\}", T),
        ("S=\\{1,2\\}", "S=\\{1,3\\}", F),
        # one value per variable, written as a list of assignments
        ("a=4, b=1", "(a,b)=(4,1)", T),
        ("b=1, a=4", "(a,b)=(4,1)", T),
        ("a=1, b=4", "(a,b)=(4,1)", F),
        ("a=4, a=1", "(a,b)=(4,1)", F),
        ("(a,b)=(4,1)", "a=4, b=1", T),
        ("x=3, y=4", "x=4, y=3", F),
        ("x = \\pm 2", "\\pm 2", T),
        ("x = \\pm 2", "2, -2", T),
        ("x = \\pm 2", "2", F),
    ])


def test_equations_with_tuple_or_set_sides():
    check([
        ("(x,y)=(1,2)", "(x,y)=(1,2)", T),
        ("(x,y)=(1,2)", "(x,y)=(2,1)", F),
        ("\\{1,2\\}=S", "S=\\{1,2\\}", T),
        ("(1,2)=(x,y)", "(x,y)=(1,2)", T),
        ("(1,2)=(x,y)", "(x,y)=(2,1)", F),
        ("x=\\{1,2\\}", "x=\\{2,1\\}", T),
        ("x=\\{1,2\\}", "x=\\{1\\}", F),
    ])


def test_inequalities_and_intervals():
    check([
        ("x>2", "2<x", T),
        ("x > 2", "x > 2", T),
        ("x \\geq 2", "x > 2", F),
        ("x > 2", "x \\ge 2", F),
        ("x \\ge 2", "2 \\le x", T),
        ("x\\geqslant 2", "[2,\\infty)", T),
        ("x > 2", "(2, \\infty)", T),
        ("x > 2", "[2, \\infty)", F),
        ("x < 2", "(2, \\infty)", F),
        ("x < 2", "(-\\infty, 2)", T),
        ("x \\le -1", "(-\\infty, -1]", T),
        ("x > 3", "x > 2", F),
        ("y > 2", "x > 2", F),
        ("0 \\le x < 3", "[0,3)", T),
        ("0 < x < 3", "[0,3)", F),
        ("3 > x \\geq 0", "[0, 3)", T),
        ("x\\in[0,3)", "[0,3)", T),
        ("x\\in[0,3)", "[0,3]", F),
        ("x \\in [0,3)", "0\\le x<3", T),
        ("x \\in (0,3]", "0\\le x<3", F),
        ("[0,3)", "x\\in[0,3)", T),
        ("x \\in (0, 3)", "0 < x < 3", T),
        ("0 < x < 3", "(0,3)", T),
        ("0 \\leq x \\leq 3", "(0,3)", F),
        ("x\\in\\{1,2\\}", "\\{2,1\\}", T),
        ("x\\in\\{1,2\\}", "\\{1,2,3\\}", F),
        ("x+y>2", "2<x+y", T),
        ("x+y>2", "x+y\\geq 2", F),
        ("x\\lt 5", "x<5", T),
        ("x \\leq 3", "x \\le 3", T),
        ("x \\leq 3", "x \\le 4", F),
    ])


def test_powers_and_bases_of_functions():
    check([
        ("\\cos^2 t", "\\cos(t)^2", T),
        ("\\cos^2 t", "1-\\sin^2 t", T),
        ("\\cos^2 t", "\\cos(t^2)", F),
        ("\\cos^{2}(t)", "(\\cos t)^2", T),
        ("\\log^2 x", "(\\log x)^2", T),
        ("\\log^2 x", "\\log(x^2)", F),
        ("\\sin^2 x + \\cos^2 x", "1", T),
        ("\\tan^3 x", "\\tan(x)^2", F),
        ("\\sin^{-1}(1)", "\\frac{\\pi}{2}", T),
        ("\\sin^{-1} x", "\\arcsin x", T),
        ("\\sin^{-1} x", "\\frac{1}{\\sin x}", F),
        ("\\log_2 8", "3", T),
        ("\\log_{2} 8", "4", F),
        ("\\log_{10}(1000)", "3", T),
    ])


def test_approx_and_chains_that_end_in_the_answer():
    check([
        ("\\approx 3.14", "3.14", T),
        ("x\\approx 3.14", "3.14", T),
        ("x \\approx 3.14", "3.15", F),
        ("x \\approx 3.14", "\\pi", F),  # three digits do not answer pi
        ("\\frac{1}{3} \\approx 0.333", "\\frac13", T),
        ("\\frac{1}{3} \\approx 0.333", "0.333", T),
        ("\\frac{1}{2} \\approx 0.333", "\\frac13", F),  # a contradictory chain answers nothing
        ("\\frac{1}{2} \\approx 0.333", "\\frac12", F),
        ("\\frac{1}{3} \\approx 0.3", "0.33", F),
        ("\\pi \\approx \\frac{22}{7}", "\\pi", F),  # "≈" between two exact values holds only if they are equal
        ("\\pi \\approx \\frac{22}{7}", "\\frac{22}{7}", F),
        ("x=2+3=5", "5", T),
        ("x = 2 + 3 = 5", "6", F),
        ("x = 4 = 5", "5", F),  # a false chain is not an answer
        ("2+3=5", "5", T),
        ("2\\cdot 3 = 6", "6", T),
        ("P = \\frac{3}{8} = 0.375", "\\frac38", T),
        ("P = \\frac{3}{8} = 0.375", "0.375", T),
        ("P = \\frac{3}{8} = 0.375", "\\frac58", F),
        ("= 5", "5", T),
        ("\\frac{1}{3} = 0.3333333", "\\frac13", T),  # "=" before a rounded decimal reads like "\\approx"
        ("2x - y + 3 = 0", "0", F),  # an equation is not a chain that ends in 0
        ("2x - y + 3 = 0", "y = 2x + 3", T),
    ])


def test_approx_through_the_reward():
    assert verify_math("</think> \\boxed{x \\approx 3.14}", "3.14", "chat").status == "ok"
    assert verify_math("</think> \\boxed{x \\approx 3.14}", "\\pi", "chat").status == "wrong"


def test_percent_written_with_a_space_or_a_word():
    check([
        ("50 \\%", "50", T),
        ("50 \\%", "0.5", T),
        ("50\\ \\%", "0.5", T),
        ("50 percent", "50", T),
        ("50\\text{ percent}", "0.5", T),
        ("50 \\text{percent}", "5", F),
        ("50 percent", "0.05", F),
        ("50", "50 \\%", T),
    ])


def test_anti_hedging_rules_unchanged():
    assert verify_math("</think> \\boxed{3} or \\boxed{4}", "3", "chat").status == "wrong"
    assert verify_math("</think> \\boxed{3 \\text{ or } 4}", "3", "chat").status == "wrong"
    assert verify_math("</think> \\boxed{A, B, C, D}", "B", "chat").status == "wrong"
    assert verify_math("</think> \\boxed{x = 3, x = 4}", "3", "chat").status == "wrong"
    # one chain names one answer: its last side (its last exact side when the gold is exact)
    check([("3 = 4", "3", F), ("3 = 4", "4", F), ("x = 3 \\approx 4", "3", F), ("x = 3 \\approx 4", "4", F)])
