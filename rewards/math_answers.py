"""Reading math answers without sympy: where the answer is, and the verdicts that need no math-verify.

math-verify reads every answer as an expression, which is wrong for a good share of real golds:
a word ("no", "even", "forty two") becomes a product of letters (so "no" = "on"), a multiple-choice
letter written "The answer is (C)." is not found at all, several boxed answers for a multi-part gold
count only the last, and an unboxed short answer is graded by its last number. `prepare` decides
what kind of answer a row has and either gives its verdict at once (words, letters, plain numbers,
tuples of numbers) or says exactly what math-verify must compare (a `Task`).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from rewards.answer import THINK_OPEN, boxed_contents, completion_text, last_boxed, split_think

#: (gold, predicted answer, mode): mode "boxed" parses the answer as LaTeX, "short" as LaTeX and then
#: with math-verify's final-answer extraction, "text" with the extraction only.
Task = tuple[str, str, str]
MODES = ("boxed", "short", "text")


# ---------------------------------------------------------------- where the answer is


def gold_answer(solution: Any) -> str:
    """The gold answer in a `solution` cell: the last `\\boxed{}` of a full solution, else the cell itself.

    >>> gold_answer(r"So $x=2$ and the sum is \\boxed{\\frac{1}{2}}."), gold_answer("3+4 = <<3+4=7>>7.\\n#### 1,007")
    ('\\\\frac{1}{2}', '1007')
    """
    text = "" if solution is None else str(solution)
    boxed = last_boxed(text)
    if boxed is None and "####" in text:  # GSM8K: the reasoning, then "#### 72"
        boxed = text.rpartition("####")[2].replace(",", "")
    text = (boxed if boxed is not None else text).strip()
    if len(text) >= 2 and text[0] == text[-1] == "$" and "$" not in text[1:-1]:
        text = text[1:-1].strip()
    return text


def answer_part(completion: Any, prompt: Any = None) -> str | None:
    """What follows `</think>` (the whole text without think tags); None when cut off inside the reasoning.

    A prompt that ends with `<think>` (R1's chat template) means the completion is all reasoning
    until it closes the tag.
    """
    text = completion_text(completion)
    reasoning, answer = split_think(text)
    if reasoning is None and (THINK_OPEN in text or (isinstance(prompt, str) and prompt.rstrip().endswith(THINK_OPEN))):
        return None
    return answer


def predicted_answer(completion: Any, prompt: Any = None) -> tuple[str, bool] | None:
    """(answer, is_boxed) of a completion, or None when it has no answer part (cut off inside `<think>`).

    >>> predicted_answer(r"<think>maybe \\boxed{3}</think> It is \\boxed{4}, not \\boxed{5}? No: \\boxed{4}.")
    ('4', True)
    """
    answer = answer_part(completion, prompt)
    if answer is None:
        return None
    boxed = last_boxed(answer)
    return (boxed, True) if boxed is not None else (answer, False)


# ---------------------------------------------------------------- cosmetic forms and plain numbers


_COSMETIC = re.compile(r"\\left|\\right|\\displaystyle|\\[!,;: ]|\s+")
_INT = re.compile(r"[+-]?\d+")
_DEC = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_SLASH = re.compile(r"([+-]?\d+)/(\d+)")
_FRAC = re.compile(r"([+-]?)\\frac(?:\{([+-]?\d+)\}|(\d))(?:\{(\d+)\}|(\d))")


def normalize(text: str) -> str:
    """Cosmetic normal form for exact matching: no spaces, `\\left`/`\\right`, spacing commands, outer `$`."""
    s = text.strip().strip("$")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\u2212", "-")
    s = _COSMETIC.sub("", s)
    return s.rstrip(".")


def as_number(text: str) -> tuple[Fraction, bool] | None:
    """(value, written_as_decimal) of a plain number: `12`, `-0.5`, `3/4`, `\\frac{3}{4}`, `\\frac34`; else None."""
    try:
        if _INT.fullmatch(text):
            return Fraction(int(text)), False
        if _DEC.fullmatch(text):
            return Fraction(text), True
        if m := _SLASH.fullmatch(text):
            return (Fraction(int(m[1]), int(m[2])), False) if int(m[2]) else None
        if m := _FRAC.fullmatch(text):
            num, den = int(m[2] or m[3]), int(m[4] or m[5])
            return (Fraction(-num if m[1] == "-" else num, den), False) if den else None
    except ValueError:  # e.g. an integer past Python's digit limit
        return None
    return None


def as_sequence(text: str) -> tuple[str, list[tuple[Fraction, bool]]] | None:
    """(brackets, numbers) of a tuple, interval or set of plain numbers: `(1,-2)`, `[2,5)`, `\\{1,3\\}`; else None."""
    if text.startswith("\\{") and text.endswith("\\}"):
        brackets, inner = "{}", text[2:-2]
    elif len(text) > 2 and text[0] in "([" and text[-1] in ")]":
        brackets, inner = text[0] + text[-1], text[1:-1]
    else:
        return None
    parts = inner.split(",")
    numbers = [as_number(part) for part in parts]
    if (len(parts) < 2 and brackets != "{}") or any(n is None for n in numbers):
        return None
    return brackets, numbers  # type: ignore[return-value]


def _numbers_verdict(g: tuple[Fraction, bool], p: tuple[Fraction, bool]) -> float | None:
    (gv, g_dec), (pv, p_dec) = g, p
    if gv == pv:
        return 1.0
    if not (g_dec or p_dec):
        return 0.0
    if abs(gv - pv) > Fraction(1, 10**5) * max(1, abs(gv), abs(pv)):
        return 0.0
    return None  # within math-verify's rounding of decimals: its call


def quick_verdict(gold: str, pred: str) -> float | None:
    """1.0/0.0 when the answer is decided without sympy (same verdict as math-verify's), else None.

    Equal normal forms are equal. Two plain numbers are compared exactly; when one is written as a
    decimal, math-verify rounds to 6 places, so only a difference far above that decides 0.0 here.
    Tuples, intervals and sets of plain numbers with the same brackets are compared element by
    element (sets as sets); anything else (units, percent, symbols, mixed brackets) is left to sympy.

    >>> quick_verdict("440", "440"), quick_verdict(r"\\frac{1}{2}", "1/2"), quick_verdict("7", "8")
    (1.0, 1.0, 0.0)
    >>> quick_verdict("[2, 5)", "[2,5]"), quick_verdict(r"\\{1, 3\\}", r"\\{3,1\\}"), quick_verdict("(1,2)", "(1,3)")
    (None, 1.0, 0.0)
    """
    g, p = normalize(gold), normalize(pred)
    if g and g == p:
        return 1.0
    gn, pn = as_number(g), as_number(p)
    if gn is not None and pn is not None:
        return _numbers_verdict(gn, pn)
    gs, ps = as_sequence(g), as_sequence(p)
    if gs is None or ps is None or gs[0] != ps[0]:
        return None
    (brackets, gnums), (_, pnums) = gs, ps
    if brackets == "{}":
        if any(d for _, d in gnums + pnums):
            return None
        return float({v for v, _ in gnums} == {v for v, _ in pnums})
    if len(gnums) != len(pnums):
        return 0.0
    verdicts = [_numbers_verdict(a, b) for a, b in zip(gnums, pnums, strict=True)]
    if 0.0 in verdicts:
        return 0.0
    return 1.0 if all(v == 1.0 for v in verdicts) else None


# ---------------------------------------------------------------- words, number words, letters

_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SMALL = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
#: Short answers that are words, not products of variables (longer ones are told apart by their vowels).
_SHORT_WORDS = frozenset({"no", "on", "odd", "yes", "all", "any", "none", "both", "true", "false", "off", "up"})


def plain_text(text: str) -> str:
    """A word answer's normal form: `\\text{}` and similar unwrapped, `$`, braces and backslashes gone,
    lower case, spaces collapsed, surrounding quotes and final punctuation dropped.

    >>> plain_text(r"$\\text{ Even }$."), plain_text(r"\\textbf{Forty-Two}")
    ('even', 'forty-two')
    """
    s = text
    for _ in range(3):
        s = _TEXT_CMD.sub(r"\1", s)
    s = s.replace("\\ ", " ").replace("~", " ")
    s = re.sub(r"[${}\\]", "", s).lower()
    s = " ".join(s.split())
    return s.strip(" .,;:!?'\"*")


def number_from_words(text: str) -> int | None:
    """The integer that English number words name ("forty two", "one hundred and five"), else None.

    >>> number_from_words("forty-two"), number_from_words("minus three"), number_from_words("forty apples")
    (42, -3, None)
    """
    words = re.split(r"[\s,-]+", plain_text(text).replace(" and ", " "))
    sign = 1
    if words and words[0] in ("minus", "negative"):
        sign, words = -1, words[1:]
    if not words or words == [""]:
        return None
    total = current = 0
    for word in words:
        if word in _SMALL:
            current += _SMALL.index(word)
        elif word in _TENS:
            current += 10 * (_TENS.index(word) + 2)
        elif word == "hundred":
            current = (current or 1) * 100
        elif word in _SCALES:
            total += (current or 1) * _SCALES[word]
            current = 0
        else:
            return None
    return sign * (total + current)


def is_word_answer(text: str) -> bool:
    """Whether an answer is words (compared as text), not an expression: letters and spaces only, and a
    known short word, several words, or one word of 3+ letters with a vowel (`xyz` stays a product).

    >>> [is_word_answer(t) for t in (r"\\text{no}", "forty two", "Devon", "xy", "2x", r"\\pi")]
    [True, True, True, False, False, False]
    """
    if re.search(r"\\(?!text|textbf|textit|mathrm|mathbf|mbox)[A-Za-z]", text):
        return False  # a LaTeX command other than a text wrapper: math
    s = plain_text(text)
    if not re.fullmatch(r"[a-z]+(?:[ '-][a-z]+)*", s):
        return False
    return " " in s or "-" in s or s in _SHORT_WORDS or (len(s) >= 3 and bool(re.search(r"[aeiou]", s)))


def choice_letter(text: str) -> str | None:
    """The multiple-choice letter a gold answer is (`C`, `(C)`, `\\text{(C)}`, `C)`), else None."""
    s = plain_text(text).upper() if "\\" in text else text.strip().strip("$").strip()
    m = re.fullmatch(r"\(?\s*([A-J])\s*[).]?", s, re.IGNORECASE if "\\" in text else 0)
    return m[1].upper() if m else None


_LETTER = r"(?:\(\s*([A-J])\s*\)|\[\s*([A-J])\s*\]|\*\*\s*\(?([A-J])\)?\s*\*\*|\b([A-J])\b(?![\w'])(?!\s+[a-z]))"
_CHOICE_PATTERNS = [re.compile(p, re.MULTILINE) for p in (
    r"\\boxed\{\s*(?:\\text(?:bf)?\{)?\s*\(?([A-J])\)?\s*\}?\s*\}",
    r"(?i:answer)\s*(?:(?i:is)|:|：)?\s*:?\s*(?:(?i:option|choice)\s*)?" + _LETTER,
    r"\*\*\s*\(?([A-J])\)?[.:]?\s*\*\*",
    r"(?i:option|choice)\s+(?:(?i:is)\s+)?" + _LETTER,
    r"[\(\[]([A-J])[\)\]][^\n]{0,40}$",
    r"^\s*\(?([A-J])[).:]?\s*$",
)]


def read_choice(answer: str) -> str | None:
    """The letter an answer picks: `\\boxed{C}`, "The answer is (C)", "Answer: C", "**C**", "option C", "(C)"
    near the end of a line, or a line that is only the letter. The strongest phrasing wins, its last use.

    >>> [read_choice(t) for t in ("The answer is (C).", "Answer: B", "I pick **D**", "So I think it is (A) here",
    ...                           "I think so.")]
    ['C', 'B', 'D', 'A', None]
    """
    for pattern in _CHOICE_PATTERNS:
        matches = list(pattern.finditer(answer))
        if matches:
            return next(g for g in matches[-1].groups() if g)
    return None


# ---------------------------------------------------------------- short unboxed answers, several boxes

_LEAD = re.compile(r"^(?:.*?\b(?:final answer|answer)\s*(?:is|:|=)?\s*:?|(?:thus|so|therefore|hence),?)\s*",
                   re.IGNORECASE | re.DOTALL)
_INEQUALITY = re.compile(r"<|>|\\[lg]eq?(?![a-z])|\\[lg]t(?![a-z])|\u2264|\u2265")


def short_answer(answer: str, limit: int = 64) -> str | None:
    """A short unboxed answer as an expression: "The final answer is $\\frac{1}{2}$." → `\\frac{1}{2}`;
    None when it is long or reads as prose (then math-verify's final-answer extraction takes over).

    >>> short_answer(r"The final answer is $\\frac{1}{2}$."), short_answer("It makes 12 apples")
    ('\\\\frac{1}{2}', None)
    """
    text = answer.strip()
    if len(text) > 4 * limit:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    text = lines[-1].strip() if lines else ""
    text = _LEAD.sub("", text, count=1).strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
            text = text[len(left) : -len(right)].strip()
    if not text or len(text) > limit or "$" in text:
        return None
    if re.search(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", text)):
        return None  # words: prose, not an expression
    return text


def last_words(answer: str, limit: int = 64) -> str:
    """An unboxed prose answer's final words: its last line after "the answer is" (or "so", "thus"), or ""."""
    lines = [line for line in answer.strip().splitlines() if line.strip()]
    text = _LEAD.sub("", lines[-1].strip(), count=1).strip() if lines else ""
    return text if len(text) <= limit else ""


def split_parts(gold: str) -> tuple[str, list[str]] | None:
    """(brackets, parts) of a multi-part gold: `3, 5` (a set), `(3, 5)` (a tuple), `\\{3, 5\\}`; else None.

    Intervals (`[1, 2)`) are one answer, not parts.
    """
    g = normalize(gold)
    if g.startswith("\\{") and g.endswith("\\}"):
        brackets, inner = "{}", g[2:-2]
    elif g.startswith("(") and g.endswith(")"):
        brackets, inner = "()", g[1:-1]
    else:
        brackets, inner = "", g
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    if len(parts) < 2 or not all(parts):
        return None
    return brackets, parts


def joined(brackets: str, parts: list[str]) -> str:
    body = ", ".join(parts)
    return {"{}": f"\\{{{body}\\}}", "()": f"({body})"}.get(brackets, body)


def has_inequality(text: str) -> bool:
    """Whether an answer is an inequality (`x > 2`, `1 \\le x`): math-verify matches those against an
    interval in one direction only, so both are tried."""
    return bool(_INEQUALITY.search(text))


# ---------------------------------------------------------------- one row


def _value(text: str) -> Fraction | None:
    """The number an answer names, in words ("forty two") or digits (`1,005`, `\\frac{1}{2}`); else None."""
    if is_word_answer(text):
        words = number_from_words(text)
        return None if words is None else Fraction(words)
    s = normalize(text)
    if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+", s):
        s = s.replace(",", "")
    number = as_number(s)
    return None if number is None else number[0]


def prepare(gold: str, answer: str) -> float | Task:
    """A row's verdict when it needs no sympy, else the task math-verify must decide.

    `answer` is the completion's answer part (after `</think>`). In order: a multiple-choice gold
    reads the picked letter; a word gold (or a number written in words, either side) compares text
    or the numbers named; a multi-part gold takes every box of the answer together; otherwise the
    last box, or a short unboxed answer as LaTeX, or math-verify's extraction of the whole answer.

    >>> prepare("C", "The answer is (C)."), prepare("no", r"\\boxed{on}"), prepare("42", r"\\boxed{forty-two}")
    (1.0, 0.0, 1.0)
    >>> prepare("3, 5", r"So $x = \\boxed{5}$ and $y = \\boxed{3}$.")
    ('3, 5', '5, 3', 'boxed')
    """
    boxes = boxed_contents(answer)
    letter = choice_letter(gold)
    if letter is not None:
        picked = read_choice(answer)
        return float(picked == letter)
    pred = boxes[-1] if boxes else (short_answer(answer) or last_words(answer))
    if is_word_answer(gold) or is_word_answer(pred):
        g_num, p_num = _value(gold), _value(pred)
        if g_num is not None and p_num is not None:
            return float(g_num == p_num)
        if is_word_answer(gold):
            return float(plain_text(pred) == plain_text(gold))
        if not boxes:
            return (gold, answer, "text")
        return 0.0  # a word against an expression gold
    if len(boxes) >= 2 and (parts := split_parts(gold)) is not None and len(boxes) == len(parts[1]):
        return (gold, joined(parts[0], boxes), "boxed")
    if boxes:
        return (gold, boxes[-1], "boxed")
    short = short_answer(answer)
    if short is not None:
        return (gold, short, "short")
    return (gold, answer, "text")
