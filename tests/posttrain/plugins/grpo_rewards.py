"""Reward plugins for the GRPO tests: cheap, deterministic, and varied on a random model's output."""

from __future__ import annotations

import json
from typing import Any

from rewards.genrm import GenRMReward
from rewards.protocol import Scored, Verifier


def length(completions: list[Any], **kwargs: Any) -> list[float]:
    """Characters in the completion: differs between a random model's samples, so groups carry signal."""
    return [float(len(c)) for c in completions]


def digits(completions: list[Any], **kwargs: Any) -> list[float]:
    """Digits in the completion."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def flat_for_marked(completions: list[Any], prompts: list[Any], **kwargs: Any) -> list[float]:
    """The same reward for every completion of a prompt starting with 'Flat' (a zero-variance group)."""
    return [0.5 if str(p).startswith("Flat") else float(len(c)) for c, p in zip(completions, prompts, strict=True)]


def judge_down(completions: list[Any], **kwargs: Any) -> list[float]:
    """Fails on every row, as a judge whose server went away."""
    raise ConnectionError("judge at http://127.0.0.1:9/v1 refused the connection")


class FirstRowFails(Verifier):
    """Fails on the first row of every call (1 of 8 in the tests' GRPO batches), scores the others by length."""

    dedupe = False

    def score_rows(self, completions: list[Any], **kwargs: Any) -> list[Scored]:
        return [Scored(None, "the first row of the batch is bad") if i == 0 else Scored(float(len(c)))
                for i, c in enumerate(completions)]


class NothingReadable(Verifier):
    """Scores every row 0.0 with an error, as the math reward does for answers in a layout it cannot read."""

    def score_rows(self, completions: list[Any], **kwargs: Any) -> list[Scored]:
        return [Scored(0.0, "no answer could be read from the completion") for _ in completions]


#: Fixed (prompt, completion) rows the recording judge also scores at every call.
PROBE = [("Compute 12+30.", "The answer is 42."), ("Compute 7+8.", "15"), ("Compute 20+22.", "<think>0+2=2</think> 42")]


class RecordingJudge(GenRMReward):
    """The `genrm` reward (same options, plus `probe_file`) that also scores `PROBE` at every call, with the same
    judge and seed, and appends those scores to `probe_file`: how the judge itself changes between GRPO steps."""

    def __init__(self, probe_file: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.probe_file = probe_file

    def score_rows(self, completions: Any, prompts: Any = None, **columns: Any) -> Any:
        out = super().score_rows(completions, prompts, **columns)
        probe = super().score_rows([c for _, c in PROBE], [p for p, _ in PROBE])
        with open(self.probe_file, "a") as f:
            f.write(json.dumps({"probe": [s.score for s in probe], "model": id(self._generator.model),
                                "training": self._generator.model.training}) + "\n")
        return out
