"""Rejection sampling: score a prompt's samples with rule-based rewards and keep the ones that pass.

DeepSeek-V3/R1 build reasoning SFT data this way: sample several answers per prompt from an expert
model, verify them by rule (the answer, the format), keep the correct ones. `judge` applies the keep
rule to one sample's scores; `select` orders a prompt's samples (shortest first when asked) so that
the filters and the `keep_per_prompt` cap see them in the order they should be preferred.
`RejectionSampler` runs the whole loop on a batch of prompts: generate, score, judge, filter, cap,
and returns the rows to write plus the counts for the stats.

DeepSeek-V3's recipe on top of that: several teachers (domain experts), each taking the prompts it is
for (`Teacher.accepts`); a teacher `system_prompt` (V3 asks its R1-based expert for reflection and
verification) that the teacher sees but the SFT row does not; non-reasoning samples (a non-reasoning
teacher, or a row marked `reasoning: false`) that pass without a `<think>` block and skip the rewards
that check the reasoning layout; and, with `keep_per_teacher`, the cap applied per teacher, so that a
prompt keeps both its original response and its R1-style one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_pipelines.filters import SampleFilter, sample_views
from posttrain.core.generation import Generator, SamplingParams, as_messages
from posttrain.core.tools import is_conversation, tool_use
from rewards.mix import RewardMix

log = logging.getLogger("posttrain.data.rejection")

#: Reasons that say a sample is worse than a kept one: such samples make preference pairs.
QUALITY_REASONS = ("reward_", "min_score", "format", "max_length", "language_mixing")


class KeepRule(BaseModel):
    """`all`: every reward at or above its threshold; `min_score`: the weighted sum at or above `min_score`."""

    model_config = ConfigDict(extra="forbid")

    rule: Literal["all", "min_score"] = "all"
    #: Threshold of every reward under `all` (a binary verifier gives 1.0 to a correct answer).
    threshold: float = 1.0
    #: Per-reward thresholds by label (the reward's name), overriding `threshold`.
    thresholds: dict[str, float] = Field(default_factory=dict)
    min_score: float | None = None
    #: Rewards that check the reasoning layout (`<think>`...): not applied to non-reasoning samples.
    reasoning_rewards: list[str] = Field(default_factory=lambda: ["format"])

    @model_validator(mode="after")
    def _min_score_given(self) -> KeepRule:
        if self.rule == "min_score" and self.min_score is None:
            raise ValueError("rule 'min_score' needs 'min_score'")
        return self


@dataclass
class Sample:
    """One generated answer and what became of it."""

    prompt_id: str
    teacher: str
    index: int
    #: The answer: a string, or a conversation `[assistant, tool, assistant, ...]` when the teacher used tools.
    completion: Any
    scores: dict[str, float | None] = field(default_factory=dict)
    #: Rewards that failed on it: {label: message}.
    errors: dict[str, str] = field(default_factory=dict)
    #: Why it was not kept (a stats key), or None if kept.
    reason: str | None = None
    #: A reasoning sample (R1-style, `<think>` first); False for non-reasoning data (no reasoning required).
    reasoning: bool = True

    @property
    def id(self) -> str:
        return f"{self.prompt_id}-{self.teacher}-{self.index}"

    @property
    def text(self) -> str:
        """The answer, or a conversation's whole text (its calls and the tools' outputs too: what SFT trains on)."""
        return sample_views(self.completion)[2]

    @property
    def passed(self) -> bool:
        """Passed the keep rule (it may still fail a filter later)."""
        return not (self.reason or "").startswith(("reward_", "min_score"))


def judge(scores: dict[str, float | None], rule: KeepRule, weights: dict[str, float]) -> str | None:
    """None if the sample passes the keep rule, else the reason: `reward_<label>` (the first reward
    below its threshold or without a score) or `min_score`."""
    if rule.rule == "all":
        for label, s in scores.items():
            if s is None or s < rule.thresholds.get(label, rule.threshold):
                return f"reward_{label}"
        return None
    total = sum(weights.get(k, 1.0) * s for k, s in scores.items() if s is not None)
    assert rule.min_score is not None
    return None if total >= rule.min_score else "min_score"


def select(samples: list[Sample], prefer_shorter: bool = False, length: Any = len) -> list[Sample]:
    """The passing samples in preference order: shortest first when asked (ties keep sample order)."""
    passing = [s for s in samples if s.reason is None]
    if prefer_shorter:
        passing.sort(key=lambda s: length(s.text))
    return passing


def pass_rate_histogram(counts: dict[str, int], passed: int, total: int) -> None:
    """Add one prompt to a `{"k/n": prompts}` histogram of how many samples passed the rewards."""
    key = f"{passed}/{total}"
    counts[key] = counts.get(key, 0) + 1


@dataclass
class Teacher:
    label: str
    generator: Generator
    n: int
    sampling: SamplingParams
    #: A system message the teacher is given before each prompt (not written to the SFT rows).
    system_prompt: str | None = None
    #: Which prompt rows this teacher takes (None: all of them).
    accepts: Callable[[dict[str, Any]], bool] | None = None
    #: Whether it writes reasoning (R1-style) answers; False: non-reasoning answers, no `<think>` needed.
    reasoning: bool = True

    def takes(self, row: dict[str, Any]) -> bool:
        return self.accepts is None or bool(self.accepts(row))

    def prompt(self, prompt: Any) -> Any:
        """What the teacher is asked: the prompt, after the system prompt when it has one."""
        if self.system_prompt is None:
            return prompt
        return [{"role": "system", "content": self.system_prompt}, *as_messages(prompt)]


def is_reasoning_row(row: dict[str, Any]) -> bool:
    """False for a prompt row marked non-reasoning (`reasoning: false`)."""
    return row.get("reasoning", True) is not False


@dataclass
class BatchResult:
    """What one batch of prompts produced: rows for data.jsonl / pairs.jsonl / errors.jsonl, and counts."""

    data: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Samples a reward failed on (no score, or a score with an error), by reward label.
    reward_errors: dict[str, int] = field(default_factory=dict)
    generated: int = 0
    passed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    histogram: dict[str, int] = field(default_factory=dict)
    #: Prompts with at least one kept sample.
    prompts_kept: int = 0
    #: Prompts no teacher takes (its domain matched none).
    unassigned: int = 0
    #: Per teacher: prompts, generated, passed (the rewards), kept, errors, rejected ({reason: count}).
    per_teacher: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: With tools: samples, calls made, calls that failed, samples that made a call; kept and kept with a call.
    tools: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + count


class RejectionSampler:
    """Generate `n` samples per prompt from each teacher, score, keep the best that pass everything."""

    def __init__(
        self,
        teachers: Sequence[Teacher],
        rewards: RewardMix | Sequence[tuple[str, Any, float]],
        rule: KeepRule,
        sample_filter: SampleFilter,
        keep_per_prompt: int = 1,
        prefer_shorter: bool = False,
        pairs_per_prompt: int = 1,
        teacher_retries: int = 2,
        chat_format: bool = False,
        length: Callable[[str], int] = len,
        contaminated: Callable[[str], bool] | None = None,
        keep_per_teacher: bool = False,
    ):
        self.teachers = list(teachers)
        self.rewards = rewards if isinstance(rewards, RewardMix) else RewardMix(rewards)
        self.weights = self.rewards.weights
        self.rule = rule
        self.filter = sample_filter
        self.keep_per_prompt = keep_per_prompt
        self.prefer_shorter = prefer_shorter
        self.pairs_per_prompt = pairs_per_prompt
        self.teacher_retries = teacher_retries
        self.chat_format = chat_format
        self.length = length
        #: Checks a completion against the eval set (decontamination of completions), when configured.
        self.contaminated = contaminated
        #: `keep_per_prompt` applies to each teacher's samples (V3 keeps both sample types of a prompt).
        self.keep_per_teacher = keep_per_teacher

    @property
    def samples_per_prompt(self) -> int:
        return sum(t.n for t in self.teachers)

    def _generate(self, teacher: Teacher, prompts: list[Any]) -> tuple[list[list[str]], list[str | None]]:
        outs, errors = teacher.generator.generate_with_errors(prompts, teacher.n, teacher.sampling)
        for attempt in range(1, self.teacher_retries + 1):
            failed = [i for i, e in enumerate(errors) if e is not None]
            if not failed:
                break
            log.warning("teacher %s failed on %d prompt(s) (%s); retry %d/%d", teacher.label, len(failed),
                        str(errors[failed[0]])[:200], attempt, self.teacher_retries)
            retry_outs, retry_errors = teacher.generator.generate_with_errors(
                [prompts[i] for i in failed], teacher.n, teacher.sampling)
            for i, out, err in zip(failed, retry_outs, retry_errors, strict=True):
                outs[i], errors[i] = out, err
        return outs, errors

    def process(self, rows: Sequence[dict[str, Any]]) -> BatchResult:
        """Rows are `{"id", "prompt", **verifier columns}`; returns what to write and count."""
        result = BatchResult()
        samples: list[list[Sample]] = [[] for _ in rows]
        assigned = [False] * len(rows)
        for teacher in self.teachers:
            stats = result.per_teacher.setdefault(teacher.label, {"prompts": 0, "generated": 0, "passed": 0,
                                                                  "kept": 0, "errors": 0, "rejected": {}})
            mine = [i for i, row in enumerate(rows) if teacher.takes(row)]
            if not mine:
                continue
            stats["prompts"] += len(mine)
            outs, errors = self._generate(teacher, [teacher.prompt(rows[i]["prompt"]) for i in mine])
            for i, out, err in zip(mine, outs, errors, strict=True):
                row = rows[i]
                assigned[i] = True
                result.generated += teacher.n
                stats["generated"] += teacher.n
                if err is not None:
                    stats["errors"] += 1
                    result.reject("teacher_error", teacher.n)
                    stats["rejected"]["teacher_error"] = stats["rejected"].get("teacher_error", 0) + teacher.n
                    result.errors.append({"prompt_id": row["id"], "teacher": teacher.label, "error": err})
                    continue
                reasoning = teacher.reasoning and is_reasoning_row(row)
                samples[i] += [Sample(row["id"], teacher.label, j, c, reasoning=reasoning) for j, c in enumerate(out)]
        result.unassigned = assigned.count(False)
        self._score(rows, samples)
        for row, group in zip(rows, samples, strict=True):
            if group:
                self._count_errors(group, result)
                self._decide(row, group, result)
        return result

    def _score(self, rows: Sequence[dict[str, Any]], samples: list[list[Sample]]) -> None:
        flat = [(row, s) for row, group in zip(rows, samples, strict=True) for s in group]
        if not flat:
            return
        names = dict.fromkeys(k for row in rows for k in row if k not in ("id", "prompt"))
        columns = {k: [row.get(k) for row, _ in flat] for k in names}
        columns["prompts"] = [row["prompt"] for row, _ in flat]
        scored = self.rewards.score([s.completion for _, s in flat], columns)
        skipped = set(self.rule.reasoning_rewards)
        for i, (_, s) in enumerate(flat):
            sc, err = scored.row(i), scored.row_errors(i)
            if not s.reasoning:  # the layout rewards do not apply to non-reasoning answers
                sc = {k: v for k, v in sc.items() if k not in skipped}
                err = {k: v for k, v in err.items() if k not in skipped}
            s.scores, s.errors = sc, err
            s.reason = judge(sc, self.rule, self.weights)

    def _count_errors(self, group: list[Sample], result: BatchResult) -> None:
        for s in group:
            for label in s.errors:
                result.reward_errors[label] = result.reward_errors.get(label, 0) + 1

    def _decide(self, row: dict[str, Any], group: list[Sample], result: BatchResult) -> None:
        passed = sum(s.reason is None for s in group)
        result.passed += passed
        pass_rate_histogram(result.histogram, passed, len(group))
        for s in group:
            if s.reason is None:
                result.per_teacher[s.teacher]["passed"] += 1
        self.filter.start_prompt()
        kept: list[Sample] = []
        for s in select(group, self.prefer_shorter, self.length):
            same = [k for k in kept if k.teacher == s.teacher] if self.keep_per_teacher else kept
            if len(same) >= self.keep_per_prompt:
                s.reason = "keep_per_prompt"  # enough kept already: not examined further
                continue
            reason = self.filter.check(s.completion, row["prompt"], reasoning=s.reasoning)
            if reason is None and self.contaminated is not None and self.contaminated(s.text):
                reason = "contaminated"
            if reason is None:
                kept.append(s)
                self.filter.add(s.completion)
            s.reason = reason
        for s in group:
            if s.reason is not None:
                result.reject(s.reason)
                rejected = result.per_teacher[s.teacher]["rejected"]
                rejected[s.reason] = rejected.get(s.reason, 0) + 1
        if kept:
            result.prompts_kept += 1
        self._count_tools(group, kept, result.tools)
        for s in kept:
            result.per_teacher[s.teacher]["kept"] += 1
            result.data.append(self._data_row(row, s))
        worse = [s for s in group if s.reason is not None and s.reason.startswith(QUALITY_REASONS)]
        for k in range(min(self.pairs_per_prompt, len(worse)) if kept else 0):
            chosen, rejected = kept[k % len(kept)], worse[k]
            result.pairs.append({
                "id": f"{row['id']}-pair{k}", "prompt_id": row["id"], "prompt": self._prompt(row["prompt"]),
                "chosen": self._completion(chosen.completion), "rejected": self._completion(rejected.completion),
                "chosen_id": chosen.id, "rejected_id": rejected.id, "rejected_reason": rejected.reason,
            })

    @staticmethod
    def _count_tools(group: list[Sample], kept: list[Sample], counts: dict[str, int]) -> None:
        for s in group:
            if not is_conversation(s.completion):
                continue
            use = tool_use(s.completion)
            for key, value in (("samples", 1), ("calls", use.calls), ("errors", use.errors),
                               ("used", use.calls > 0), ("kept", s in kept), ("kept_used", s in kept and use.calls)):
                counts[key] = counts.get(key, 0) + int(bool(value) if key in ("used", "kept", "kept_used") else value)

    def _prompt(self, prompt: Any) -> Any:
        return as_messages(prompt) if self.chat_format else prompt

    def _completion(self, completion: Any) -> Any:
        """A row's completion: a conversation as it is (the whole of it: calls, outputs, answer), else the text as
        the row format wants it."""
        if is_conversation(completion):
            return completion
        return [{"role": "assistant", "content": completion}] if self.chat_format else completion

    def _data_row(self, row: dict[str, Any], s: Sample) -> dict[str, Any]:
        extra = {k: v for k, v in row.items() if k not in ("id", "prompt")}
        failed = {"errors": s.errors} if s.errors else {}
        plain = {"reasoning": False} if not s.reasoning else {}
        return {"id": s.id, "prompt_id": row["id"], "prompt": self._prompt(row["prompt"]),
                "completion": self._completion(s.completion), "teacher": s.teacher, "scores": s.scores, **failed,
                **extra, **plain}
