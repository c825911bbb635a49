"""Multiple-choice presets: the options as lettered lines, the answer letter checked by `ChoiceReward`.

- `gpqa`: GPQA-Diamond (`Idavidrein/gpqa`, config gpqa_diamond, split train: `Question`, `Correct Answer`,
  `Incorrect Answer 1..3`, `Record ID`). The four answers are shuffled per question, deterministically
  (from the record id and `shuffle_seed`), so a rerun asks the same questions with the same letters.
- `mmlu`: MMLU (`cais/mmlu`, config `subject` (default all), split test: `question`, `choices`, `answer`
  as an index; a letter is read too, so MMLU-style sets with more options work alike).

The prompt asks for a last line `Answer: $LETTER` (the format simple-evals uses for both); the extractor
also takes `\\boxed{C}`, "the answer is (C)" and a bare letter, reading only the answer after `</think>`.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Sequence
from typing import Any

from posttrain.eval_presets import Benchmark, BenchmarkOptions, field
from rewards.protocol import RowVerifier, Scored

CHOICE_PROMPT = ("Answer the following multiple choice question. The last line of your response should be of the "
                 "form 'Answer: $LETTER' (without quotes) where LETTER is one of {letters}. Think step by step "
                 "before answering.\n\n{question}\n\n{options}")
#: "Answer: C", "answer is (C)", "**Answer:** $C$", "Answer: \\text{C}"; the word in any case, the letter a capital.
_ANSWER = re.compile(r"(?i:answer)(?:\s+(?:is|would\s+be))?\s*[:：]?[\s*_]*(?:\\\(|\$)?\s*[(\[{]?\s*"
                     r"(?:\\text(?:bf)?\{)?\s*([A-Z])(?![A-Za-z0-9])")
_BARE = re.compile(r"^[\s*_(\[{$]*(?:\\text(?:bf)?\{)?([A-Z])[\s*_)\]}$.:]*$")


def render_choices(question: str, choices: Sequence[str]) -> tuple[str, str]:
    """(prompt, letters): the question and its options as `A) ...` lines."""
    letters = string.ascii_uppercase[:len(choices)]
    options = "\n".join(f"{letter}) {str(choice).strip()}" for letter, choice in zip(letters, choices, strict=True))
    return CHOICE_PROMPT.format(letters=letters, question=question.strip(), options=options), letters


def extract_letter(completion: Any, letters: str = "ABCD") -> str | None:
    """The answer letter of a completion (after `</think>`), or None when it names none of `letters`.

    The last of "Answer: X" / "the answer is (X)" / `\\boxed{X}` wins; else a reply that is only a letter.

    >>> extract_letter("<think>Answer: A? no.</think> B is wrong, so the answer is (C).")
    'C'
    >>> extract_letter("The answer is a number."), extract_letter("**Answer:** $\\\\boxed{D}$"), extract_letter("B")
    (None, 'D', 'B')
    """
    from rewards.answer import answer_text, last_boxed

    text = answer_text(completion)
    found = [(m.start(), m.group(1)) for m in _ANSWER.finditer(text) if m.group(1) in letters]
    start = text.rfind("\\boxed")
    boxed = last_boxed(text) if start >= 0 else None
    if boxed is not None and (m := _BARE.match(boxed)) and m.group(1) in letters:
        found.append((start, m.group(1)))
    if found:
        return max(found)[1]
    m = _BARE.match(text)
    return m.group(1) if m and m.group(1) in letters else None


class ChoiceReward(RowVerifier):
    """1.0 when the completion's answer letter is the gold `answer` letter, else 0.0 (TRL's reward signature).

    Columns: `answer` (the gold letter), optional `letters` (the valid ones, default ABCD). A completion
    that names no letter scores 0.0 and says so; a row without a valid gold letter scores None.

    >>> ChoiceReward()(["Answer: B", "Answer: C", "no idea"], answer=["B", "B", "B"])
    [1.0, 0.0, 0.0]
    """

    columns = ("answer", "letters")

    def score_rows(self, completions: Sequence[Any], **kwargs: Any) -> list[Scored]:
        if kwargs.get("answer") is None:
            raise ValueError("ChoiceReward needs an `answer` column (the gold letter)")
        return super().score_rows(completions, **kwargs)

    def score_row(self, completion: Any, answer: Any = None, letters: Any = None) -> Scored:
        valid = str(letters) if letters is not None else "ABCD"
        gold = str(answer).strip()
        if len(gold) != 1 or gold not in valid:
            return Scored(None, f"gold answer {answer!r} is not one of the letters {valid}")
        got = extract_letter(completion, valid)
        return Scored(float(got == gold), None if got is not None else f"no answer letter ({valid}) found")


class _ChoiceBenchmark(Benchmark):
    def rewards(self) -> list[dict[str, Any]]:
        return [{"name": "posttrain.eval_presets.choice:ChoiceReward"}]


class GPQAOptions(BenchmarkOptions):
    #: Seeds the per-question order of the answers (0 for the published figures' order here).
    shuffle_seed: int = 0


class GPQADiamond(_ChoiceBenchmark):
    name = "gpqa"
    title = "GPQA-Diamond"
    source = "Idavidrein/gpqa"
    config = "gpqa_diamond"
    split = "train"
    Options = GPQAOptions

    def convert(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        question = str(field(row, "Question", "question"))
        correct = str(field(row, "Correct Answer")).strip()
        choices = [correct] + [str(field(row, f"Incorrect Answer {i}")).strip() for i in (1, 2, 3)]
        row_id = str(row.get("Record ID") or f"gpqa-{index}")
        order = shuffled_order(len(choices), self.options.shuffle_seed, row_id)
        prompt, letters = render_choices(question, [choices[j] for j in order])
        return {"id": row_id, "prompt": prompt, "answer": letters[order.index(0)], "letters": letters}


def shuffled_order(n: int, seed: int, key: str) -> list[int]:
    """A permutation of range(n) fixed by (seed, key): the same on every machine and Python run.

    >>> shuffled_order(4, 0, "rec1") == shuffled_order(4, 0, "rec1")
    True
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    order = list(range(n))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


class MMLUOptions(BenchmarkOptions):
    #: The hub config: `all`, or one subject such as `abstract_algebra`.
    subject: str = "all"


class MMLU(_ChoiceBenchmark):
    name = "mmlu"
    title = "MMLU"
    source = "cais/mmlu"
    Options = MMLUOptions

    def hub_config(self) -> str | None:
        return self.options.subject

    def convert(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        choices = list(field(row, "choices", "options"))
        prompt, letters = render_choices(str(field(row, "question")), choices)
        answer = field(row, "answer")
        gold = letters[int(answer)] if isinstance(answer, int) or str(answer).isdigit() else str(answer).strip()
        if gold not in letters:
            raise ValueError(f"answer {answer!r} is neither an index nor one of {letters}")
        subject = row.get("subject")
        return {"id": f"mmlu-{subject}-{index}" if subject else f"mmlu-{index}", "prompt": prompt, "answer": gold,
                "letters": letters}
