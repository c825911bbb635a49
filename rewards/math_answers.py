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

from rewards.answer import THINK_OPEN, answer_tag, boxed_contents, boxed_spans, completion_text, split_think
from rewards.protocol import Scored

#: (gold, predicted answer, mode): mode "boxed" parses the answer (a box's content) as LaTeX; "short" reads
#: the answer text's short final expression (`short_answer`) as LaTeX and, if that finds nothing, the whole
#: text with math-verify's final-answer extraction; "text" the whole text with the extraction only.
Task = tuple[str, str, str]
MODES = ("boxed", "short", "text")
#: How the error of an answer part that nothing could read begins (a 0.0 with an error, never a silent 0).
UNREADABLE = "no answer could be read"


def unreadable(answer: str) -> str:
    """The error of a row whose answer part holds nothing the reader can parse: most often a prompt that asks
    for a layout the reward does not read, which a run should show in its first minute."""
    snippet = " ".join(answer.split())
    snippet = snippet if len(snippet) <= 120 else f"{snippet[:57]} … {snippet[-57:]}"
    return (f"{UNREADABLE} from {snippet!r} (read: the inside of <answer>…</answer>, else the last \\boxed{{}}, "
            "else a final expression)")


# ---------------------------------------------------------------- where the answer is


def gold_answer(solution: Any) -> str:
    """The gold answer in a `solution` cell: the last `\\boxed{}` of a full solution (all of them, joined, when
    the cell is boxes and separators alone: a multi-part gold), GSM8K's `#### N`, else the cell itself.

    >>> gold_answer(r"So $x=2$ and the sum is \\boxed{\\frac{1}{2}}."), gold_answer("3+4 = <<3+4=7>>7.\\n#### 1,007")
    ('\\\\frac{1}{2}', '1007')
    >>> gold_answer(r"\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).")
    '1, -2'
    """
    text = "" if solution is None else str(solution)
    spans = boxed_spans(text)
    boxed = spans[-1][2] if spans else None
    if len(spans) >= 2 and _only_separators(text, spans):
        boxed = ", ".join(content.strip() for _, _, content in spans)
    if boxed is None and "####" in text:  # GSM8K: the reasoning, then "#### 72"
        boxed = text.rpartition("####")[2].replace(",", "")
    text = (boxed if boxed is not None else text).strip()
    if len(text) >= 2 and text[0] == text[-1] == "$" and "$" not in text[1:-1]:
        text = text[1:-1].strip()
    return text


_SEPARATORS = re.compile(r"\\(?:quad|qquad|text\s*\{\s*(?:and|or)?\s*\}|[(),;:! \[\]])|\$|\s|[,;.&]|\b(?:and|or)\b")


def _only_separators(text: str, spans: list[tuple[int, int, str]]) -> bool:
    """Whether nothing but separators (commas, "and", `\\quad`, math delimiters) stands between the boxes."""
    edges = [0, *(i for start, end, _ in spans for i in (start, end)), len(text)]
    outside = "".join(text[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True))
    return not _SEPARATORS.sub("", outside)


def answer_part(completion: Any, prompt: Any = None) -> str | None:
    """What follows `</think>` (the whole text without think tags), or the inside of its `<answer>…</answer>`;
    None when cut off inside the reasoning.

    A prompt that ends with `<think>` (R1's chat template) means the completion is all reasoning
    until it closes the tag.
    """
    text = completion_text(completion)
    reasoning, answer = split_think(text)
    if reasoning is None and (THINK_OPEN in text or (isinstance(prompt, str) and prompt.rstrip().endswith(THINK_OPEN))):
        return None
    tagged = answer_tag(answer)
    return answer if tagged is None else tagged


def predicted_answer(completion: Any, prompt: Any = None) -> tuple[str, bool] | None:
    """(answer, is_boxed) of a completion, or None when it has no answer part (cut off inside `<think>`).

    >>> predicted_answer(r"<think>maybe \\boxed{3}</think> It is \\boxed{4}, not \\boxed{5}? No: \\boxed{4}.")
    ('4', True)
    """
    answer = answer_part(completion, prompt)
    if answer is None:
        return None
    boxes = boxed_contents(answer)
    return (boxes[-1], True) if boxes else (answer, False)


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


def lone_letter(answer: str) -> str | None:
    """The letter an answer is when it is one letter and nothing else, in any case and wrapping (`$E$`, `$e$`,
    `$\\text{E}$`, `(e)`): models answer a letter gold written `\\text{E}` that way as often as with "(E)".

    >>> lone_letter("$e$"), lone_letter(r"$\\text{(E)}$"), lone_letter("$x$"), lone_letter("ab")
    ('E', 'E', None, None)
    """
    s = plain_text(answer).strip("()*[] ")
    return s.upper() if re.fullmatch(r"[a-j]", s) else None


# ---------------------------------------------------------------- short unboxed answers, several boxes

_LEAD = re.compile(r"^(?:.*?\b(?:final answer|answer)\s*(?:is|:|=)?\s*:?|(?:thus|so|therefore|hence),?)\s*",
                   re.IGNORECASE | re.DOTALL)
_INEQUALITY = re.compile(r"<|>|\\[lg]eq?(?![a-z])|\\[lg]t(?![a-z])|\u2264|\u2265")


_DISPLAY_END = re.compile(r"(\\\]|\$\$|\\end\{([A-Za-z]*\*?)\})\s*\.?\s*$")
_ENVIRONMENT = re.compile(r"\\(?:begin|end)\{[A-Za-z]*\*?\}")


def final_block(text: str) -> str | None:
    """The display math (`\\[…\\]`, `$$…$$`) or LaTeX environment (`\\begin{bmatrix}…`) that ends `text`, over
    however many lines it spans; None when the text ends otherwise.

    >>> final_block("Answer \\\\[ \\n 9 \\n \\\\]"), final_block("It is 9.")
    ('\\\\[ \\n 9 \\n \\\\]', None)
    """
    m = _DISPLAY_END.search(text)
    if m is None:
        return None
    opener = {"\\]": "\\[", "$$": "$$"}.get(m[1], f"\\begin{{{m[2]}}}")
    start = text.rfind(opener, 0, m.start())
    return text[start : m.end()].strip() if start >= 0 else None


def short_answer(answer: str, limit: int = 64) -> str | None:
    """A short unboxed answer as an expression: "The final answer is $\\frac{1}{2}$." → `\\frac{1}{2}`; display
    math or an environment that ends the answer, on as many lines as it takes, is one expression. None when
    the answer is long, reads as prose, or holds no expression (then math-verify's final-answer extraction
    of the whole answer takes over).

    >>> short_answer(r"The final answer is $\\frac{1}{2}$."), short_answer("It makes 12 apples")
    ('\\\\frac{1}{2}', None)
    >>> short_answer("Answer \\\\[ \\n 9 \\n \\\\]"), short_answer("</answer>")
    ('9', None)
    """
    text = answer.strip()
    if len(text) > 4 * limit:
        return None
    block = final_block(text)
    if block is not None:
        text, room = " ".join(block.split()), 4 * limit
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        text, room = (lines[-1].strip() if lines else ""), limit
        text = _LEAD.sub("", text, count=1).strip()
    text = text.rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
            text = text[len(left) : -len(right)].strip()
    if not text or len(text) > room or "$" in text or not re.search(r"[0-9A-Za-z]", text):
        return None
    if re.search(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", _ENVIRONMENT.sub("", text))):
        return None  # words: prose, not an expression
    return text


def last_words(answer: str, limit: int = 64) -> str:
    """An unboxed prose answer's final words: its last line after "the answer is" (or "so", "thus"), or ""."""
    lines = [line for line in answer.strip().splitlines() if line.strip()]
    text = _LEAD.sub("", lines[-1].strip(), count=1).strip() if lines else ""
    return text if len(text) <= limit else ""


def split_parts(gold: str) -> tuple[str, list[str]] | None:
    """(brackets, parts) of a multi-part gold: `3, 5` (a set), `(3, 5)` (a tuple), `\\{3, 5\\}` or `{3, 5}` (a set),
    `(2, 2), (6, 2)` (a set of tuples); else None. Intervals (`[1, 2)`) are one answer, not parts.

    >>> split_parts("(2, 2), (6, 2)"), split_parts("{1,2}")
    (('', ['(2,2)', '(6,2)']), ('{}', ['1', '2']))
    """
    g = normalize(gold)
    if g.startswith("\\{") and g.endswith("\\}") and _wraps(g[1:-2] + "}"):
        brackets, inner = "{}", g[2:-2]
    elif len(g) > 1 and (g[0], g[-1]) in (("(", ")"), ("{", "}")) and _wraps(g):
        brackets, inner = g[0] + g[-1], g[1:-1]
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


def _wraps(text: str) -> bool:
    """Whether the bracket that opens `text` closes at its last character (`(1,2)`, not `(1,2),(3,4)`)."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0:
            return i == len(text) - 1
    return False


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


def prepare(gold: str, answer: str) -> float | Scored | Task:
    """A row's verdict when it needs no sympy, else the task math-verify must decide.

    `answer` is the completion's answer part (after `</think>`, inside `<answer>` tags when it has them).
    In order: a multiple-choice gold reads the picked letter; a word gold (or a number written in words,
    either side) compares text or the numbers named; a multi-part gold takes every box of the answer
    together; otherwise the last box, or a short unboxed answer as LaTeX, or math-verify's extraction of
    the whole answer. A letter gold against an answer that names no letter is 0.0 with an error.

    >>> prepare("C", "The answer is (C)."), prepare("no", r"\\boxed{on}"), prepare("42", r"\\boxed{forty-two}")
    (1.0, 0.0, 1.0)
    >>> prepare("3, 5", r"So $x = \\boxed{5}$ and $y = \\boxed{3}$.")
    ('3, 5', '5, 3', 'boxed')
    """
    boxes = boxed_contents(answer)
    letter = choice_letter(gold)
    if letter is not None:
        picked = read_choice(answer) or lone_letter(answer)
        return Scored(0.0, unreadable(answer)) if picked is None else float(picked == letter)
    short = short_answer(answer)
    pred = boxes[-1] if boxes else (short or last_words(answer))
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
    if short is not None:
        return (gold, answer, "short")
    return (gold, answer, "text")


def compared_expression(task: Task) -> str | None:
    """The expression a task compares without sympy (`quick_verdict`): a box's content, a short answer; None
    for a text only math-verify's extraction can read."""
    _, pred, mode = task
    if mode == "boxed":
        return pred
    return short_answer(pred) if mode == "short" else None
