"""Judged examples that teach a model to be a generative reward model (GenRM): rows an `sft` stage trains on.

DeepSeek-V3's model-based reward writes a chain of thought, then its verdict. A small model learns
that format from examples: rule-based verifiers (by default the `math` and strict `format` rewards)
label each completion, and a scripted judge turns their findings into short reasoning and a verdict
in the format `rewards.genrm` parses (`Verdict: Score: 8/10`). The judge prompt is rendered with the
same template the `genrm` reward renders at scoring time, so the trained judge is scored on exactly
the layout it was taught on. Rows are `{"prompt", "completion", "score", "source"}`: SFT trains on
the completion only; `score` (the verdict in [0, 1]) and `source` are kept for inspection.

>>> print(scripted_judgement("<think>9+5=13</think> The answer is \\\\boxed{13}.", "14", {"math": 0.0, "format": 1.0},
...                          {"math": 0.8, "format": 0.2}, scale=10))
Answer 13, reference 14: 3:4! 1:1= incorrect. Format correct.
Verdict: Score: 2/10
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from rewards.answer import answer_text, completion_text, last_boxed
from rewards.mix import RewardMix

log = logging.getLogger("posttrain.data.judge")

#: A rule-based verifier: (label, reward function with TRL's signature, weight in the verdict).
Verifier = tuple[str, Callable[..., Sequence[float | None]], float]


def default_verifiers() -> list[Verifier]:
    """The answer (`math`, weight 0.8) and R1's format with a boxed answer (`format`, weight 0.2)."""
    from rewards.registry import get_reward

    return [("math", get_reward("math", workers=0), 0.8), ("format", get_reward("format", strict=True), 0.2)]


def reference_answer(pair: dict[str, Any]) -> str | None:
    """The reference for a preference pair: its `solution`, else the chosen answer's last `\\boxed{}` (the chosen
    completion passed the verifiers when the distill stage made the pair)."""
    solution = pair.get("solution")
    if solution not in (None, ""):
        return str(solution)
    return last_boxed(answer_text(pair.get("chosen", "")))


def pair_rows(pairs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completions to judge from preference pairs: each pair's chosen and rejected, with the pair's reference."""
    rows = []
    for pair in pairs:
        reference = reference_answer(pair)
        for source in ("chosen", "rejected"):
            rows.append({"prompt": pair.get("prompt", ""), "completion": pair[source], "solution": reference,
                         "source": source})
    return rows


def verdict_score(scores: dict[str, float | None], weights: dict[str, float], scale: int) -> int | None:
    """The weighted mean of the verifiers that judged, on the integer scale 0..`scale`; None if none judged."""
    judged = {k: s for k, s in scores.items() if s is not None and weights.get(k, 0) > 0}
    if not judged:
        return None
    total = sum(weights[k] for k in judged)
    return round(scale * sum(weights[k] * max(0.0, min(1.0, s)) for k, s in judged.items()) / total)


def scripted_judgement(completion: Any, reference: str | None, scores: dict[str, float | None],
                       weights: dict[str, float], scale: int = 10, use_reference: bool = True,
                       prompt: Any = None) -> str:
    """Short reasoning from the verifiers' findings, then `Verdict: Score: X/scale` (raises if none judged).

    The answer is read where the `math` reward reads it (after `</think>`, the last `\\boxed{}`), so the
    reasoning never contradicts the verdict.
    """
    score = verdict_score(scores, weights, scale)
    if score is None:
        raise ValueError("no verifier judged this completion")
    from rewards.math import predicted_answer

    predicted = predicted_answer(completion, prompt)
    if predicted is None:
        head = "No final answer (the reasoning never ends)"
    else:
        head = f"Answer {predicted[0].strip()}" if predicted[1] else "No boxed answer"
    steps = ""
    if use_reference and reference is not None:
        head += f", reference {reference}"
        if predicted is not None and predicted[1]:
            steps = digit_comparison(predicted[0].strip(), str(reference).strip())
    math = scores.get("math")
    finding = "cannot be checked" if math is None else ("correct" if math >= 1 else "incorrect")
    parts = [f"{head}: {steps + ' ' if steps else ''}{finding}."]
    fmt = scores.get("format")
    if fmt is not None:
        parts.append("Format correct." if fmt >= 1 else "Format incorrect.")
    for label, value in scores.items():
        if label not in ("math", "format") and value is not None:
            parts.append(f"{label.capitalize()}: {value:.2g}.")
    return " ".join(parts) + f"\nVerdict: Score: {score}/{scale}"


def digit_comparison(answer: str, reference: str) -> str:
    """`8:7! 3:3= 5:5=` for two whole numbers of up to 12 digits, from the right (else empty): a step-by-step
    check a small judge can learn, each mark written after the two digits it compares.

    >>> digit_comparison("538", "537")
    '8:7! 3:3= 5:5='
    >>> digit_comparison("1160", "160")
    '0:0= 6:6= 1:1= 1:_!'
    """
    if not (answer.isdigit() and reference.isdigit()) or max(len(answer), len(reference)) > 12:
        return ""
    width = max(len(answer), len(reference))
    a, r = answer[::-1].ljust(width, "_"), reference[::-1].ljust(width, "_")
    return " ".join(f"{x}:{y}{'=' if x == y else '!'}" for x, y in zip(a, r, strict=True))


def judged_examples(rows: Sequence[dict[str, Any]], verifiers: RewardMix | Sequence[Verifier], *,
                    template: str = "compact", use_reference: bool = True, scale: int = 10) -> list[dict[str, Any]]:
    """SFT rows (`prompt` = the judge prompt, `completion` = reasoning + verdict) for the rows the verifiers judged."""
    from rewards.genrm import render

    mix = verifiers if isinstance(verifiers, RewardMix) else RewardMix(verifiers)
    weights = mix.weights
    out = []
    scored = mix.score([r["completion"] for r in rows], {"prompts": [r.get("prompt", "") for r in rows],
                                                         "solution": [r.get("solution") for r in rows]})
    failed = [errors for i in range(len(rows)) if (errors := scored.row_errors(i))]
    if failed:
        log.warning("a verifier failed on %d of %d rows (e.g. %s); it does not vote on their verdicts", len(failed),
                    len(rows), next(iter(failed[0].values()))[:200])
    for i, row in enumerate(rows):
        errors = scored.row_errors(i)
        scores = {label: None if label in errors else s for label, s in scored.row(i).items()}
        score = verdict_score(scores, weights, scale)
        if score is None:
            continue
        reference = row.get("solution") if use_reference else None
        prompt = render(template, prompt=completion_text(row.get("prompt", "")), completion=completion_text(
            row["completion"]), reference=reference, scale=str(scale), principles=None)
        judgement = scripted_judgement(row["completion"], reference, scores, weights, scale, use_reference,
                                       row.get("prompt"))
        out.append({"prompt": prompt, "completion": " " + judgement, "score": score / scale,
                    "source": row.get("source")})
    return out


def write_judge_examples(rows: Sequence[dict[str, Any]], path: str | Path, *,
                         verifiers: RewardMix | Sequence[Verifier] | None = None, template: str = "compact",
                         use_reference: bool = True, scale: int = 10, max_examples: int | None = None,
                         seed: int = 0) -> int:
    """Judge `rows` (shuffled by `seed`, at most `max_examples`) and write them to `path` as JSON lines, atomically.

    Returns the number of rows written. The same rows and seed write the same file.
    """
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    if max_examples is not None:
        rows = rows[:max_examples]
    examples = judged_examples(rows, verifiers if verifiers is not None else default_verifiers(), template=template,
                               use_reference=use_reference, scale=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for example in examples:
            f.write(json.dumps(example) + "\n")
    tmp.replace(path)
    if examples:
        mean = sum(e["score"] for e in examples) / len(examples)
        log.info("judged %d completions (mean verdict %.2f, %d left out: no verifier could judge them)",
                 len(examples), mean, len(rows) - len(examples))
    return len(examples)
