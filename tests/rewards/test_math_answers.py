"""The math reward on rows shaped like the public sets people train and evaluate on (our own rows).

MATH / MATH-500 (`\\boxed{}` golds, `\\text{}` words, intervals), GSM8K (`#### 72`), AIME (integers),
GPQA / MMLU / AQuA (a letter), Omni-MATH-style multi-part answers, and inequalities. Each case
names the defect it guards: words parsed as products of letters, a short unboxed answer graded
by its last number, unboxed letters not read, several boxes counted as the last, inequalities
matched one way only.
"""

from __future__ import annotations

import pytest

from rewards.math import MathReward
from rewards.math_answers import (
    choice_letter,
    gold_answer,
    is_word_answer,
    number_from_words,
    prepare,
    read_choice,
    short_answer,
    split_parts,
)


@pytest.fixture(scope="module")
def reward() -> MathReward:
    return MathReward(workers=0)


def r1(answer: str, think: str = "Let me work through it carefully.") -> str:
    return f"<think>{think}</think>\n\n{answer}"


def scores(reward: MathReward, rows: list[tuple[str, str, float]]) -> list[tuple[str, str, float | None]]:
    """The rows whose score is not the expected one (empty when all are right), errors must be None."""
    got, errors = reward.score_with_errors([r1(a) for _, a, _ in rows], solution=[g for g, _, _ in rows])
    assert errors == [None] * len(rows), errors
    return [(g, a, s) for (g, a, want), s in zip(rows, got, strict=True) if s != want]


def test_words_are_text_never_products_of_letters(reward: MathReward) -> None:
    rows = [
        ("no", r"The answer is $\boxed{on}$.", 0.0),  # an anagram: math-verify says n*o == o*n
        ("no", r"$\boxed{\text{No}}$", 1.0),
        (r"\text{even}", r"\boxed{\text{odd}}", 0.0),
        (r"\text{even}", r"\boxed{Even}", 1.0),
        (r"\text{Devon}", r"\boxed{\text{ devon }}", 1.0),
        (r"\text{Devon}", r"\boxed{\text{Noved}}", 0.0),
        ("yes", "Yes.", 1.0),
        ("42", r"\boxed{\text{forty-two}}", 1.0),  # a number in words against a number
        ("42", "The answer is forty two.", 1.0),
        ("forty two", r"\boxed{42}", 1.0),
        ("forty two", r"\boxed{24}", 0.0),
        ("1,005", r"\boxed{one thousand and five}", 1.0),
        ("7", r"\boxed{seven apples}", 0.0),
    ]
    assert scores(reward, rows) == []


def test_short_unboxed_latex_is_read_as_latex_before_the_last_number(reward: MathReward) -> None:
    rows = [
        (r"2\sqrt{2}", r"The final answer is $\sqrt{8}$.", 1.0),  # before: nothing extracted, a silent 0
        ("x^2+2x+1", "So the answer is (x+1)^2", 1.0),
        ("3", "x+3", 0.0),  # the last number is not the answer
        ("5", "2^5", 0.0),
        ("32", r"$2^5$", 1.0),
        ("12", "It makes 12 apples", 1.0),  # prose still goes to math-verify's extraction
        (r"\frac{1}{2}", r"Therefore:\n$$\frac{2}{4}$$", 1.0),
    ]
    assert scores(reward, rows) == []


@pytest.mark.parametrize(("answer", "expected"), [
    ("The answer is (C).", 1.0), ("Answer: C", 1.0), ("**C**", 1.0), ("The correct option is C.", 1.0),
    ("After eliminating the others we are left with (C)", 1.0), ("C", 1.0), (r"$\boxed{C}$", 1.0),
    (r"\boxed{\text{(C)}}", 1.0), ("The answer is (B).", 0.0), ("Answer: D", 0.0), ("I think so.", 0.0),
    ("I think the answer is C", 1.0), ("A is wrong and B is wrong, so the answer is C.", 1.0),
])
def test_multiple_choice_letters_without_a_box(reward: MathReward, answer: str, expected: float) -> None:
    """GPQA / MMLU / AQuA: the gold is a letter; R1-style answers name it in many phrasings."""
    for gold in ("C", "(C)", r"\text{(C)}"):
        assert reward([r1(answer)], solution=[gold]) == [expected], (gold, answer)


def test_several_boxes_against_a_multi_part_gold(reward: MathReward) -> None:
    rows = [
        ("3, 5", r"The roots are $\boxed{3}$ and $\boxed{5}$.", 1.0),
        ("3, 5", r"The roots are $\boxed{5}$ and $\boxed{3}$.", 1.0),  # a set: any order
        ("3, 5", r"The roots are $\boxed{3}$ and $\boxed{4}$.", 0.0),
        ("(3, 5)", r"$x = \boxed{3}$, $y = \boxed{5}$", 1.0),
        ("(3, 5)", r"$x = \boxed{5}$, $y = \boxed{3}$", 0.0),  # a tuple: in order
        (r"\{-1, 2\}", r"$\boxed{2}$ or $\boxed{-1}$", 1.0),
        ("5", r"First $\boxed{3}$, no: $\boxed{5}$.", 1.0),  # a one-part gold: the last box
    ]
    assert scores(reward, rows) == []


def test_inequalities_and_intervals_match_both_ways(reward: MathReward) -> None:
    rows = [
        (r"(2, \infty)", r"$\boxed{x > 2}$", 1.0),
        (r"x > 2", r"$\boxed{(2, \infty)}$", 1.0),
        (r"[1, 3]", r"$\boxed{1 \le x \le 3}$", 1.0),
        (r"[1, 3]", r"$\boxed{1 < x \le 3}$", 0.0),
        (r"(2, \infty)", r"$\boxed{x \geq 2}$", 0.0),
    ]
    assert scores(reward, rows) == []


def test_dataset_shapes(reward: MathReward) -> None:
    gsm8k = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72 clips.\n#### 72"
    math500 = r"Completing the square, $(x-3)^2 = 4$, so the sum of the roots is $\boxed{6}$."
    aime = "033"
    rows = [
        (gsm8k, r"She sold $\boxed{72}$ clips.", 1.0), (gsm8k, "She sold 72 clips in all.", 1.0),
        (gsm8k, r"\boxed{71}", 0.0),
        (math500, r"\boxed{6}", 1.0), (math500, r"\boxed{3}", 0.0),
        (aime, r"\boxed{33}", 1.0), (aime, r"\boxed{330}", 0.0),
    ]
    assert scores(reward, rows) == []
    assert gold_answer(gsm8k) == "72"


def test_pieces() -> None:
    assert choice_letter("C") == "C" and choice_letter(r"\text{(B)}") == "B" and choice_letter("c") is None
    assert choice_letter("x") is None and choice_letter("CD") is None
    assert read_choice("The answer is (C). Not (A).") == "C"
    assert read_choice("Maybe A. Final answer: **B**") == "B"
    assert [is_word_answer(t) for t in ("no", "ab", "xyz", "abc", "x y", r"\frac{1}{2}", "3 apples")] == [
        True, False, False, True, True, False, False]
    assert number_from_words("one hundred and twenty-three") == 123 and number_from_words("twelve dozen") is None
    assert short_answer("The answer is $x^2$.") == "x^2" and short_answer("I am not sure about this one.") is None
    assert split_parts("[1, 2)") is None and split_parts("(1, 2)") == ("()", ["1", "2"])
    assert prepare("3, 5", r"\boxed{3, 5}") == ("3, 5", "3, 5", "boxed")
