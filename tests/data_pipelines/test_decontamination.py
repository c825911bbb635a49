from __future__ import annotations

from data_pipelines.decontamination import Decontaminator, ngrams, prompt_text, tokens

EVAL = [
    "Let x be the smallest positive integer such that x squared leaves remainder 1 when divided by 24.",
    "Compute 365+75.",
]


def test_tokens_split_numbers_and_punctuation() -> None:
    assert tokens("Compute 365+75.") == ["compute", "365", "+", "75", "."]
    assert ngrams("a b c d", 3) == {("a", "b", "c"), ("b", "c", "d")}
    assert ngrams("a b", 3) == {("a", "b")}
    assert ngrams("", 3) == set()


def test_an_eight_gram_overlap_is_contamination() -> None:
    deco = Decontaminator(EVAL, n=8)
    # Rephrased start, but 8 tokens in a row are the eval problem's.
    leaked = "Find the least positive integer x such that x squared leaves remainder 1 when divided by 24"
    assert deco.match(leaked) == 0
    assert deco.match("Let y be an integer such that y is odd; find the remainder of y squared by 8.") is None


def test_short_eval_prompts_match_when_contained() -> None:
    deco = Decontaminator(EVAL, n=8)
    assert deco.match("compute 365 + 75 .") == 1  # case and spacing do not hide it
    assert deco.match("Please compute 365+75. Show your work.") == 1
    assert deco.match("Compute 365+76.") is None
    assert deco.match("Compute 65+75.") is None  # numbers are whole tokens


def test_ngram_size_is_configurable() -> None:
    text = "the smallest positive integer such that"
    assert Decontaminator(EVAL, n=8).match(text) is None
    assert Decontaminator(EVAL, n=5).match(text) == 0


def test_prompt_text_joins_a_chat() -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 365+75."}]
    assert Decontaminator(EVAL, n=8).match(prompt_text(chat)) == 1
