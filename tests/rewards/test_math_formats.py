"""The answer layouts users bring to the math reward, and what it says when it cannot read one.

R1-Zero reproductions (open-r1's and TinyZero's system prompt) put the answer in `<answer>…</answer>`;
others box it, write it in display math after a phrase, or give a bare matrix. A layout the reader
does not know must never score a silent 0: a completion with an answer part that nothing can parse
scores 0.0 with an error, while a readable wrong answer is a plain 0.0.
"""

from __future__ import annotations

import pytest

from rewards.math import MathReward
from rewards.math_answers import answer_part, short_answer, split_parts
from rewards.registry import get_reward

BMATRIX = "\\begin{bmatrix}\n -7 & 6 & -8 \\\\\n 11 & -9 & 12 \\\\\n 15 & -16 & 19 \n \\end{bmatrix}"
PMATRIX = "\\begin{pmatrix}\n -7 & 6 & -8 \\\\\n 11 & -9 & 12 \\\\\n 15 & -16 & 19\n \\end{pmatrix}"


@pytest.fixture(scope="module")
def reward() -> MathReward:
    return MathReward(workers=0)


def check(reward: MathReward, rows: list[tuple[str, str, float]]) -> list[tuple[str, str, float | None, str | None]]:
    """The rows scored otherwise than expected, or with an error (empty when all are right)."""
    got, errors = reward.score_with_errors([c for c, _, _ in rows], solution=[g for _, g, _ in rows])
    return [(c, g, s, e) for (c, g, want), s, e in zip(rows, got, errors, strict=True) if s != want or e]


def test_the_answer_inside_answer_tags(reward: MathReward) -> None:
    """open-r1 / TinyZero's layout: `<think>…</think>` then `<answer>…</answer>`, the answer in any form inside."""
    rows = [
        ("<think>r</think>\n<answer>\n12\n</answer>", "12", 1.0),
        ("<think>r</think>\n<answer>\n$12$\n</answer>", "12", 1.0),
        ("<think>r</think>\n<answer>\n\\boxed{12}\n</answer>", "12", 1.0),
        ("<think>r</think><answer>12</answer>", "12", 1.0),
        ("<think>r</think>\n<answer>\n13\n</answer>", "12", 0.0),
        ("<think>r</think>\n<answer>\n\\frac{1}{2}\n</answer>", "0.5", 1.0),
        ("<think>r</think>\n<answer>\nThe answer is $x^2+2x+1$.\n</answer>", "(x+1)^2", 1.0),
        ("<think>r</think>\n<answer>\nThere are 9 distinct objects.\n</answer>", "9", 1.0),
        ("<think>r</think>\n<answer>\n(C)\n</answer>", "C", 1.0),
        ("<think>r</think>\n<answer>\nno\n</answer>", "no", 1.0),
        ("<think>r</think>\n<answer>\\boxed{3}</answer> then \\boxed{4}", "3", 1.0),  # the tags win over a box
        ("<think>r</think>\n<answer>\n12", "12", 1.0),  # cut off before the closing tag
        ("<answer>12</answer>", "12", 1.0),  # no reasoning block: the whole text is the answer part
        ("<think>r</think>\n<answer>\n\\boxed{3} and \\boxed{5}\n</answer>", "3, 5", 1.0),
    ]
    assert check(reward, rows) == []
    assert answer_part("<think>a</think> <answer> 7 </answer>") == " 7 "


def test_display_math_after_a_phrase(reward: MathReward) -> None:
    rows = [
        ("Answer \\[ \n 9 \n \\]", "9", 1.0),
        ("<think>r</think> Answer \\[ \n 9 \n \\]", "9", 1.0),
        ("<think>r</think> So the answer is\n$$\n\\frac{10}{9}\n$$", "10/9", 1.0),
        ("<think>r</think> Answer \\[ 9 \\]", "9", 1.0),
        ("<think>r</think> Answer \\[ \n 8 \n \\]", "9", 0.0),
    ]
    assert check(reward, rows) == []
    assert short_answer("Answer \\[ \n 9 \n \\]") == "9"
    assert short_answer("\\]") is None and short_answer("</answer>") is None and short_answer(">") is None


def test_a_bare_matrix_in_one_bracket_environment_against_a_gold_in_another(reward: MathReward) -> None:
    """verl's prime_math test: an unboxed `bmatrix` answer against a `pmatrix` gold is right."""
    rows = [
        (BMATRIX, PMATRIX, 1.0),
        (f"<think>r</think>\n{BMATRIX}", PMATRIX, 1.0),
        (f"<think>r</think>\nThe matrix is\n{BMATRIX}", PMATRIX, 1.0),
        (BMATRIX.replace("19", "18"), PMATRIX, 0.0),
    ]
    assert check(reward, rows) == []


@pytest.mark.parametrize(("gold", "answer", "expected"), [
    ("\\text{E}", "$E$", 1.0), ("\\text{e}", "$e$", 1.0), ("\\text{E}", "$\\text{E}$", 1.0),
    ("\\text{(E)}", "$E$", 1.0), ("\\text{E}", "$D$", 0.0), ("E", "$E$", 1.0), ("\\text{E}", "E", 1.0),
])
def test_a_single_letter_gold_against_a_letter_in_math(reward: MathReward, gold: str, answer: str,
                                                       expected: float) -> None:
    assert check(reward, [(answer, gold, expected), (f"<think>r</think> {answer}", gold, expected)]) == []


def test_multi_part_golds_whose_parts_are_bracketed(reward: MathReward) -> None:
    rows = [
        ("$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$", "(2, 2), (6, 2)", 1.0),
        ("$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 3)}$$", "(2, 2), (6, 2)", 0.0),
        ("\\boxed{1} and \\boxed{2} and \\boxed{3}", "{1,2,3}", 1.0),
        ("\\boxed{1},\\boxed{2},\\boxed{4}", "{1,2,3}", 0.0),
    ]
    assert check(reward, rows) == []
    assert split_parts("(2, 2), (6, 2)") == ("", ["(2,2)", "(6,2)"])
    assert split_parts("{1,2,3}") == ("{}", ["1", "2", "3"])
    assert split_parts("(1, 2)") == ("()", ["1", "2"]) and split_parts("[1, 2)") is None


def test_a_gold_made_of_boxes_alone_is_a_multi_part_gold(reward: MathReward) -> None:
    """A gold written as boxes and separators only (`\\boxed{1} and \\boxed{-2}`) lists every part; a full
    solution with prose around its boxes keeps its last box (the final answer)."""
    rows = [
        ("$\\boxed{-2,1}$.", "\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).", 1.0),
        ("$\\boxed{1,2}$", "$\\boxed{1}\\boxed{2}$", 1.0),
        ("$\\boxed{2}$", "$\\boxed{1}\\boxed{2}$", 0.0),
        ("$${2, 3, 5, 7, 13}$$", "$$\\boxed{2}, \\boxed{3}, \\boxed{5}, \\boxed{7}, \\boxed{13}$$", 1.0),
        ("\\boxed{0.75}", "We have $x = \\boxed{2}$ first, and the sum is $\\boxed{\\frac{3}{4}}$.", 1.0),
    ]
    assert check(reward, rows) == []


def test_an_answer_part_that_nothing_can_read_scores_zero_with_an_error(reward: MathReward) -> None:
    completions = ["<think>r</think>\n<answer>\nfoo bar\n</answer>",  # tags whose content parses to nothing
                   "<think>r</think> I cannot tell.",  # prose with no number or expression
                   "<think>r</think> The answer is \\boxed{}.",  # an empty box
                   "<think>r</think> blah blah nothing"]
    scores, errors = reward.score_with_errors(completions, solution=["12"] * 4)
    assert scores == [0.0] * 4
    assert all(e is not None and e.startswith("no answer could be read") for e in errors), errors
    # A multiple-choice gold and an answer that names no letter: the same.
    scores, errors = reward.score_with_errors(["<think>r</think> I think so."], solution=["C"])
    assert scores == [0.0] and (errors[0] or "").startswith("no answer could be read")


def test_readable_wrong_answers_and_empty_answers_stay_a_plain_zero(reward: MathReward) -> None:
    completions = ["<think>r</think> \\boxed{13}", "<think>r</think> The answer is 13.", "<think>r</think>   ",
                   "<think>r</think>\n<answer>\n</answer>", "<think>cut off inside the reasoning",
                   "<think>r</think> The answer is (B).", "<think>r</think> \\boxed{seven apples}"]
    scores, errors = reward.score_with_errors(completions, solution=["12", "12", "12", "12", "12", "C", "7"])
    assert scores == [0.0] * 7
    assert errors == [None] * 7


def test_unreadable_answers_are_counted_by_the_reward_but_are_not_failures() -> None:
    """GRPO stops on failures (rows with no score), not on answers a young policy writes badly."""
    reward = get_reward("math", workers=0)
    metrics: dict[str, float] = {}
    reward(["<think>r</think> no idea", "<think>r</think> \\boxed{12}"], solution=["12", "12"],
           log_metric=metrics.__setitem__)
    assert reward.error_count == 1 and reward.failed_count == 0
    assert metrics == {"rewards/math/error_rate": 0.5}
    reward(["<think>r</think> \\boxed{1}"], solution=[""])  # an empty gold: no score, a failure
    assert reward.error_count == 2 and reward.failed_count == 1
    assert (reward.first_failure or "").startswith("empty gold")
