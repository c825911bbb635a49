"""Language consistency (DeepSeek-R1's reward against language mixing): share of words in the target language.

R1 found that reasoning drifts into a mix of languages under RL and added a reward equal to the
proportion of target-language words. Words are told apart by writing system (Latin, Han, kana,
Hangul, Cyrillic, …): no model to download, and it is exactly the mixing R1 penalises (Chinese
inside an English answer). Languages that share a script (English and French) are not told apart.
Math, code, LaTeX commands, URLs and single Latin letters (variables, option letters) are not words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from posttrain.core.errors import PluginError
from rewards.answer import THINK_CLOSE, THINK_OPEN, completion_text, split_think

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
_WORD = re.compile("|".join(f"(?P<{name}>[{chars}]{'' if name in _PER_CHARACTER else '+'})"
                            for name, chars in _SCRIPTS.items()))
_NOT_WORDS = re.compile(
    r"```.*?(?:```|$)|`[^`\n]*`"  # code
    r"|\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]"  # math
    r"|\\[A-Za-z]+|https?://\S+",  # LaTeX commands, URLs
    re.DOTALL,
)
PARTS = ("answer", "reasoning", "all")


def words_by_script(text: str) -> dict[str, int]:
    """Word counts per writing system, after dropping math, code, LaTeX commands, URLs and lone Latin letters.

    >>> words_by_script("The sum 是 $x+y$ 等于 five.")
    {'latin': 3, 'han': 3}
    """
    counts: dict[str, int] = {}
    for match in _WORD.finditer(_NOT_WORDS.sub(" ", text)):
        script = match.lastgroup or ""
        if script == "latin" and len(match.group()) == 1:
            continue
        counts[script] = counts.get(script, 0) + 1
    return counts


def script_of(language: str) -> frozenset[str]:
    """The scripts of a language code (`en`, `zh`, `zh-CN`, `pt_BR`); unknown codes raise ValueError."""
    code = re.split(r"[-_]", str(language).strip().lower())[0]
    if code not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown language {language!r}: use an ISO 639-1 code such as "
                         f"{', '.join(sorted(LANGUAGE_SCRIPTS)[:12])}, …")
    return LANGUAGE_SCRIPTS[code]


def target_share(text: str, language: str) -> float | None:
    """Share of the words of `text` written in the script(s) of `language`; None when there are no words."""
    counts = words_by_script(text)
    total = sum(counts.values())
    if not total:
        return None
    scripts = script_of(language)
    return sum(n for s, n in counts.items() if s in scripts) / total


class LanguageReward:
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
        self.last_errors: list[str | None] = []

    def _text(self, completion: Any) -> str:
        text = completion_text(completion)
        if self.part == "all":
            return text.replace(THINK_OPEN, " ").replace(THINK_CLOSE, " ")
        reasoning, answer = split_think(text)
        if self.part == "answer":
            return "" if reasoning is None and THINK_OPEN in text else answer
        if reasoning is None:  # no closing tag: all of it is reasoning if it opened one
            return text.split(THINK_OPEN, 1)[1] if THINK_OPEN in text else ""
        return reasoning

    def __call__(self, completions: Sequence[Any], language: Sequence[Any] | str | None = None,
                 **kwargs: Any) -> list[float | None]:
        n = len(completions)
        if isinstance(language, str) or language is None:
            languages: list[Any] = [language] * n
        elif len(language) == n:
            languages = list(language)
        else:
            raise ValueError(f"language reward: {len(language)} languages for {n} completions")
        scores: list[float | None] = []
        errors: list[str | None] = []
        for completion, lang in zip(completions, languages, strict=True):
            lang = lang if lang is not None else self.language
            try:
                if lang is None:
                    raise ValueError("no target language: give a `language` column or the `language` option")
                scores.append(target_share(self._text(completion), lang))
                errors.append(None)
            except ValueError as exc:
                scores.append(None)
                errors.append(f"language reward: {exc}")
        self.last_errors = errors
        return scores

    def __repr__(self) -> str:
        return f"LanguageReward(language={self.language!r}, part={self.part!r})"
