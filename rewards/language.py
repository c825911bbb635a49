"""Language consistency (DeepSeek-R1's reward against language mixing): share of words in the target language.

R1 found that reasoning drifts into a mix of languages under RL and added a reward equal to the
proportion of target-language words. Words are told apart by writing system (Latin, Han, kana,
Hangul, Cyrillic, …): no model to download, and it is exactly the mixing R1 penalises (Chinese
inside an English answer). Languages that share a script (English and French) are not told apart.
Math, code, LaTeX commands, URLs, think tags and single Latin or Greek letters (variables, option
letters, angles) are not words. The SFT data filter judges language mixing with the same counts
(`mixed_share`), so a kept sample and the reward agree on what is mixed.
"""

from __future__ import annotations

import re
from typing import Any

from posttrain.core.errors import PluginError
from rewards.answer import THINK_OPEN, completion_text, split_think
from rewards.protocol import RowVerifier, Scored

#: Writing systems and their Unicode ranges. Ideographic and kana characters count one word each.
_SCRIPTS: dict[str, str] = {
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f",
    "kana": "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff",
    "hangul": "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af",
    "cyrillic": "\u0400-\u04ff\u0500-\u052f",
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "arabic": "\u0600-\u06ff\u0750-\u077f",
    "hebrew": "\u0590-\u05ff",
    "devanagari": "\u0900-\u097f",
    "thai": "\u0e00-\u0e7f",
}
_PER_CHARACTER = ("han", "kana")
#: Scripts whose lone letters are symbols (x, α), not words.
_SYMBOL_LETTERS = ("latin", "greek")
_LATIN_LANGUAGES = ("en fr de es it pt nl sv da no nb fi pl cs sk sl hr ro hu tr vi id ms tl sw ca eu gl et lv lt "
                    "is ga cy af sq")
#: ISO 639-1 code -> the scripts its words are written in.
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{code: frozenset({"latin"}) for code in _LATIN_LANGUAGES.split()},
    "zh": frozenset({"han"}),
    "ja": frozenset({"han", "kana"}),
    "ko": frozenset({"hangul"}),
    **{code: frozenset({"cyrillic"}) for code in ("ru", "uk", "bg", "be", "mk", "kk", "mn")},
    "sr": frozenset({"cyrillic", "latin"}),
    "el": frozenset({"greek"}),
    **{code: frozenset({"arabic"}) for code in ("ar", "fa", "ur", "ps")},
    "he": frozenset({"hebrew"}),
    **{code: frozenset({"devanagari"}) for code in ("hi", "mr", "ne", "sa")},
    "th": frozenset({"thai"}),
}
_CJK = frozenset({"han", "kana"})
_WORD = re.compile("|".join(f"(?P<{name}>[{chars}]{'' if name in _PER_CHARACTER else '+'})"
                            for name, chars in _SCRIPTS.items()))
_NOT_WORDS = re.compile(
    r"```.*?(?:```|$)|`[^`\n]*`"  # code
    r"|\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]"  # math
    r"|\\[A-Za-z]+|https?://\S+|</?think>",  # LaTeX commands, URLs, think tags
    re.DOTALL,
)
PARTS = ("answer", "reasoning", "all")


def _scan(text: str) -> tuple[dict[str, int], int]:
    """(words per script, letters in those words), after dropping what is not language."""
    counts: dict[str, int] = {}
    letters = 0
    for match in _WORD.finditer(_NOT_WORDS.sub(" ", text)):
        script = match.lastgroup or ""
        word = match.group()
        if script in _SYMBOL_LETTERS and len(word) == 1:
            continue
        counts[script] = counts.get(script, 0) + 1
        letters += len(word)
    return counts, letters


def words_by_script(text: str) -> dict[str, int]:
    """Word counts per writing system, after dropping math, code, LaTeX commands, URLs, think tags and lone letters.

    >>> words_by_script("The sum 是 $x+y$ 等于 five.")
    {'latin': 3, 'han': 3}
    """
    return _scan(text)[0]


def script_of(language: str) -> frozenset[str]:
    """The scripts of a language code (`en`, `zh`, `zh-CN`, `pt_BR`) or a script name (`latin`, `han`, or `cjk`:
    Han and kana); anything else raises ValueError."""
    code = re.split(r"[-_]", str(language).strip().lower())[0]
    if code in LANGUAGE_SCRIPTS:
        return LANGUAGE_SCRIPTS[code]
    if code in _SCRIPTS:
        return frozenset({code})
    if code == "cjk":
        return _CJK
    raise ValueError(f"unknown language {language!r}: use an ISO 639-1 code such as "
                     f"{', '.join(sorted(LANGUAGE_SCRIPTS)[:12])}, …, or a script ({', '.join(_SCRIPTS)}, cjk)")


def _counts(text: str, language: str | None) -> tuple[int, int, int]:
    """(words in the scripts of `language`, words, letters); without a language, the main script's (Han and kana
    together: Japanese writes both)."""
    counts, letters = _scan(text)
    total = sum(counts.values())
    if not total:
        return 0, 0, letters
    if language is not None:
        scripts = script_of(language)
    else:
        main = max(counts, key=counts.__getitem__)
        scripts = _CJK if main in _CJK else frozenset({main})
    return sum(n for s, n in counts.items() if s in scripts), total, letters


def target_share(text: str, language: str) -> float | None:
    """Share of the words of `text` written in the script(s) of `language`; None when there are no words."""
    inside, total, _ = _counts(text, language)
    return inside / total if total else None


def mixed_share(text: str, language: str | None = None) -> tuple[float, int]:
    """(share of words outside the script(s) of `language`, or of the main script; letters counted): language mixing.

    >>> mixed_share("First add the units, 然后进位.")
    (0.5, 20)
    """
    inside, total, letters = _counts(text, language)
    return ((total - inside) / total if total else 0.0), letters


class LanguageReward(RowVerifier):
    """Language consistency: share of the answer's words in the target language (column or kwarg `language`).

    `part` picks the text judged: `answer` (after `</think>`, the default), `reasoning` (inside
    `<think>`, as in DeepSeek-R1), or `all`. A per-row `language` column wins over the `language`
    option. A text without words has nothing to judge: None. An unknown language code gives None and
    an error for that row.

    >>> LanguageReward(language="en")(["<think>想一想</think> The answer is 4.", "<think>x</think> 答案是 4"])
    [1.0, 0.0]
    >>> LanguageReward(part="reasoning")(["<think>先算 2+2, then check</think> 4"], language=["zh"])
    [0.5]
    """

    columns = ("language",)

    def __init__(self, language: str | None = None, part: str = "answer"):
        if part not in PARTS:
            raise PluginError(f"language reward: part must be one of {', '.join(PARTS)}, got {part!r}")
        if language is not None:
            try:
                script_of(language)
            except ValueError as exc:
                raise PluginError(f"language reward: {exc}") from None
        self.language = language
        self.part = part

    def _text(self, completion: Any) -> str:
        text = completion_text(completion)
        if self.part == "all":
            return text  # the tags are not words
        reasoning, answer = split_think(text)
        if self.part == "answer":
            return "" if reasoning is None and THINK_OPEN in text else answer
        if reasoning is None:  # no closing tag: all of it is reasoning if it opened one
            return text.split(THINK_OPEN, 1)[1] if THINK_OPEN in text else ""
        return reasoning

    def score_row(self, completion: Any, language: Any = None) -> Scored:
        language = language if language is not None else self.language
        if language is None:
            return Scored(None, "language reward: no target language: give a `language` column or the `language` "
                                "option")
        try:
            return Scored(target_share(self._text(completion), language))
        except ValueError as exc:
            return Scored(None, f"language reward: {exc}")

    def __repr__(self) -> str:
        return f"LanguageReward(language={self.language!r}, part={self.part!r})"
