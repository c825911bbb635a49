from __future__ import annotations

import pytest

from data_pipelines.filters import (
    FilterSpec,
    NearDuplicateIndex,
    NearDuplicateSpec,
    SampleFilter,
    format_problem,
    is_language_mixed,
    jaccard,
    mixed_share,
    shingles,
)

GOOD = "<think>5+5=10; 6+7+1=14; 3+0+1=4</think>\nThe answer is \\boxed{440}."


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (GOOD, None),
        ("  " + GOOD, None),
        ("5+5=10</think>\nThe answer is \\boxed{440}.", "no <think> block at the start"),
        ("<think>5+5=10\nThe answer is \\boxed{440}.", "expected exactly one <think> and one </think>"),
        ("<think>a</think><think>b</think> x", "expected exactly one <think> and one </think>"),
        ("<think> </think> The answer is 4.", "empty reasoning"),
        ("<think>2+2=4</think>\n  ", "no answer after </think>"),
    ],
)
def test_format_problem(text: str, problem: str | None) -> None:
    assert format_problem(text) == problem


def test_format_can_require_a_boxed_answer() -> None:
    unboxed = "<think>2+2=4</think> The answer is 4."
    assert format_problem(unboxed) is None
    assert format_problem(unboxed, require_boxed=True) == "no \\boxed{} answer"
    assert format_problem("<think>\\boxed{4}</think> four", require_boxed=True) == "no \\boxed{} answer"


def test_language_mixing() -> None:
    english = "<think>First add the units, then carry the one to the tens.</think> The answer is \\boxed{4}."
    assert mixed_share(english)[0] == 0.0
    assert not is_language_mixed(english)
    mixed = "<think>First add the units, 然后把十位加起来, then carry the one.</think> The answer is 4."
    share, letters = mixed_share(mixed)
    assert 0.1 < share < 0.5 and letters > 20
    assert is_language_mixed(mixed)
    chinese = "<think>先把个位相加，然后进位到十位，最后得到结果。</think>\\boxed{4}"
    assert not is_language_mixed(chinese, min_letters=5)  # one script (tags and LaTeX commands do not count)
    assert is_language_mixed(chinese, language="en", min_letters=5)  # ...but not the one asked for
    assert not is_language_mixed("Let α and β be the roots; then α+β = -b/a, so the sum is known.")  # math Greek
    assert not is_language_mixed("计算 x", min_letters=20)  # too short to judge


def test_shingles_and_jaccard() -> None:
    a = shingles("the answer is 440", 2)
    assert a == {("the", "answer"), ("answer", "is"), ("is", "440")}
    assert shingles("short", 3) == {("short",)}
    assert jaccard(a, a) == 1.0
    assert jaccard(a, shingles("the answer is 441", 2)) == 0.5


def test_near_duplicate_index_finds_similar_texts_only() -> None:
    index = NearDuplicateIndex(threshold=0.7, k=2)
    base = "first add the units then carry the one to the tens and finally write the answer down"
    index.add(base)
    index.add("something completely different about prime numbers and their many curious properties")
    assert index.find(base.replace("finally", "then")) == 0
    assert index.find("a new text about geometry and triangles with nothing shared at all here") is None
    assert index.find(base[: len(base) // 2]) is None  # half of it is not 70 % similar


def _filter(**kwargs: object) -> SampleFilter:
    spec = FilterSpec(**kwargs)  # type: ignore[arg-type]
    f = SampleFilter(spec, count_tokens=lambda text: len(text.split()))
    f.start_prompt()
    return f


def test_each_filter_gives_its_reason() -> None:
    assert _filter().check(GOOD) is None
    assert _filter().check("The answer is \\boxed{440}.") == "format"
    assert _filter(format=False).check("The answer is \\boxed{440}.") is None
    assert _filter(require_boxed=True).check("<think>x</think> The answer is 440.") == "format"
    assert _filter(max_chars=20).check(GOOD) == "max_length"
    assert _filter(max_tokens=5).check(GOOD) == "max_length"
    assert _filter(max_tokens=50).check(GOOD) is None
    mixed = "<think>First add the units, 然后把十位加起来, then carry the one.</think> The answer is 4."
    assert _filter().check(mixed) == "language_mixing"
    assert _filter(max_mixed=None).check(mixed) is None


def test_exact_duplicates_are_global_after_whitespace_normalisation() -> None:
    f = _filter()
    f.add(GOOD)
    f.start_prompt()  # another prompt: exact duplicates still count
    assert f.check(GOOD.replace("\n", "  \n ")) == "duplicate"
    assert _filter(exact_duplicates=False).check(GOOD) is None


def test_near_duplicates_within_a_prompt_or_globally() -> None:
    long = "<think>" + " ".join(f"step {i} adds the digits {i} and {i + 1} carefully" for i in range(12)) + \
        "</think> The answer is \\boxed{42}."
    similar = long.replace("step 11", "stage 11")
    per_prompt = _filter(exact_duplicates=False)
    per_prompt.add(long)
    assert per_prompt.check(similar) == "near_duplicate"
    per_prompt.start_prompt()
    assert per_prompt.check(similar) is None  # another prompt: not compared
    everywhere = _filter(near_duplicates=NearDuplicateSpec(scope="global"))
    everywhere.add(long)
    everywhere.start_prompt()
    assert everywhere.check(similar) == "near_duplicate"
    assert _filter(near_duplicates=None, exact_duplicates=False).check(similar) is None


# ---------------------------------------------------------------- one implementation: filter and rewards agree

FORMAT_CASES = [
    GOOD, "  " + GOOD, "<think>x</think> It is 42.", "<think>x</think> It is \\boxed{42}.",
    "<think></think> \\boxed{42}", "<think> </think> The answer is 4.", "<think>x</think> It is \\boxed{}.",
    "<think>\\boxed{4}</think> four", "<think>2+2=4</think>\n  ", "The answer is \\boxed{4}.",
    "5+5=10</think>\nThe answer is \\boxed{440}.", "<think>5+5=10\nThe answer is \\boxed{440}.",
    "<think>a</think><think>b</think> x", "<think>a</think> b <think>c", "preamble <think>a</think> b",
]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("require_reasoning", [False, True])
@pytest.mark.parametrize("prompt", [None, "<|User|>Compute 365+75.<|Assistant|><think>\n"])
def test_the_format_filter_keeps_exactly_what_the_format_reward_scores_one(strict: bool, require_reasoning: bool,
                                                                           prompt: str | None) -> None:
    from rewards.registry import get_reward

    sample_filter = _filter(require_boxed=strict, require_reasoning=require_reasoning, max_mixed=None,
                            exact_duplicates=False, near_duplicates=None)
    reward = get_reward("format", strict=strict, require_reasoning=require_reasoning)
    kept = [float(sample_filter.check(text, prompt) is None) for text in FORMAT_CASES]
    assert reward(FORMAT_CASES, prompts=[prompt] * len(FORMAT_CASES)) == kept
    assert 0 < sum(kept) < len(FORMAT_CASES)


LANGUAGE_CASES = [
    "<think>First add the units, then carry the one to the tens.</think> The answer is \\boxed{4}.",
    "<think>First add the units, 然后把十位加起来, then carry the one.</think> The answer is 4.",
    "<think>先把个位相加，然后进位到十位，最后得到结果。</think>\\boxed{4}",
    "<think>先算 $x+y$ 的值, 再用 α 和 β 求和。</think> 答案是 $\\alpha+\\beta$",  # math is not language
    "Let α and β be the roots; then α+β = -b/a, so the sum is known.",
    "<think>Сложим единицы, потом десятки.</think> Ответ: 440.",
    "<think>これは良いです。答えは四百四十。</think> 440",
    "<think>Use `print(x)` and $\\frac{a}{b}$ here</think> Done, see https://example.com/x",
    "<think>Add the units first, then the tens, then the hundreds, and write it down 好.</think> It is 440.",
    "<think>1+1=2</think> 2",
]


@pytest.mark.parametrize("language", ["en", "zh", "ja", "ru"])
@pytest.mark.parametrize("max_mixed", [0.05, 0.3])
def test_the_language_filter_and_the_language_reward_count_the_same_words(language: str, max_mixed: float) -> None:
    from rewards.registry import get_reward

    sample_filter = _filter(language=language, max_mixed=max_mixed, min_letters=1, format=False,
                            exact_duplicates=False, near_duplicates=None)
    shares = get_reward("language", language=language, part="all")(LANGUAGE_CASES)
    for text, share in zip(LANGUAGE_CASES, shares, strict=True):
        mixed = share is not None and 1.0 - share > max_mixed
        assert (sample_filter.check(text) == "language_mixing") == mixed, (text, share)
        assert mixed_share(text, language)[0] == pytest.approx(0.0 if share is None else 1.0 - share)
