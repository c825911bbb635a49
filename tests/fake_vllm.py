"""A stand-in for vLLM 0.31's offline engine where vLLM cannot be installed (no GPU here): it records what posttrain
sends it and answers the way vLLM does where that matters to posttrain, read from vLLM 0.31.0's source:

- `LLM(...)` turns its statistics off unless `disable_log_stats=False` is passed (`entrypoints/llm.py`), and then
  `get_metrics()` asserts "Stat logging disabled" (`v1/engine/llm_engine.py`);
- a text prompt is tokenized with `add_special_tokens=True` (`renderers/params.py`); a `{"prompt_token_ids": ...}`
  prompt is taken as it is;
- with a speculative config, the counters `vllm:spec_decode_num_draft_tokens` and `..._accepted_tokens` grow, one
  sample per engine (`v1/spec_decode/metrics.py`; `get_metrics` lists each label set apart).

Completions are the prompt's last token ids decoded back (enough to see what the engine was given).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list[str] | None = None
    skip_special_tokens: bool = True
    seed: int | None = None
    logprobs: int | None = None


@dataclass
class Counter:
    name: str
    labels: dict[str, str]
    value: int


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int]


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class LLM:
    """Built engines are kept in `LLM.built`; each keeps the prompts it was given (token ids) in `self.prompts`."""

    built: ClassVar[list[LLM]] = []
    #: Tokens drafted and accepted per generated sequence, when speculative decoding is on.
    DRAFTED, ACCEPTED = 4, 3

    def __init__(self, model: str, dtype: str = "auto", **kwargs: Any) -> None:
        from transformers import AutoTokenizer

        self.model, self.dtype, self.kwargs = model, dtype, kwargs
        self.disable_log_stats = kwargs.get("disable_log_stats", True)  # vLLM's LLM default
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.prompts: list[list[int]] = []
        self.counts = {"vllm:spec_decode_num_draft_tokens": [0, 0], "vllm:spec_decode_num_accepted_tokens": [0, 0]}
        LLM.built.append(self)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: list[Any], params: Any) -> list[RequestOutput]:
        params = params if isinstance(params, list) else [params] * len(prompts)
        out = []
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else self.tokenizer.encode(prompt)
            self.prompts.append(list(ids))
            tail = list(ids[-2:])
            out.append(RequestOutput(list(ids), [CompletionOutput(self.tokenizer.decode(tail), tail)
                                                 for _ in range(p.n)]))
            if self.kwargs.get("speculative_config"):
                engine = i % 2  # two engines (data parallel): each keeps its own counters
                self.counts["vllm:spec_decode_num_draft_tokens"][engine] += self.DRAFTED * p.n
                self.counts["vllm:spec_decode_num_accepted_tokens"][engine] += self.ACCEPTED * p.n
        return out

    def get_metrics(self) -> list[Any]:
        assert not self.disable_log_stats, "Stat logging disabled"
        return [Counter(name, {"engine": str(i)}, value) for name, values in self.counts.items()
                for i, value in enumerate(values)]


def install(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Put the stand-in where `import vllm` (and `importlib.util.find_spec("vllm")`) finds it, for one test."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = LLM, SamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(LLM, "built", [])
    return module
