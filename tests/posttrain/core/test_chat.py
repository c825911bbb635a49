"""Templates that open `<think>` in the prompt: the completion the rewards see is the whole assistant turn."""

from __future__ import annotations

import doctest
from collections.abc import Callable
from pathlib import Path

import posttrain.core.chat
from posttrain.core.chat import think_opener, with_opener
from posttrain.core.generation import GenerationSpec, HFGenerator, SamplingParams
from posttrain.core.models import load_causal_lm, load_tokenizer

USER = [{"role": "user", "content": "Compute 1+2."}]


def test_documented() -> None:
    result = doctest.testmod(posttrain.core.chat)
    assert result.attempted >= 4 and result.failed == 0


def _generator(base: Path, chat: bool = False) -> HFGenerator:
    return HFGenerator(load_causal_lm(str(base)), load_tokenizer(str(base)), GenerationSpec(backend="hf", chat=chat))


def test_hf_completions_start_with_what_the_template_opened(family_base: Callable[[str], Path]) -> None:
    sampling = SamplingParams(temperature=1.0, max_new_tokens=4, seed=0)
    thinking = _generator(family_base("qwen3"))
    chat, plain = thinking.generate([USER, "Compute 1+2."], n=2, sampling=sampling)
    assert all(c.startswith("<think>\n") for c in chat)
    assert not any(c.startswith("<think>\n") for c in plain)  # a plain prompt is not templated: nothing opened
    greedy = thinking.generate([USER], n=2, sampling=sampling.model_copy(update={"temperature": 0.0}))
    assert all(c.startswith("<think>\n") for c in greedy[0])
    templated = _generator(family_base("qwen3"), chat=True).generate(["Compute 1+2."], n=1, sampling=sampling)
    assert templated[0][0].startswith("<think>\n")  # `chat: true` renders plain prompts too
    other = _generator(family_base("llama")).generate([USER], n=2, sampling=sampling)
    assert not any(c.startswith("<think>\n") for c in other[0])


def test_the_opener_is_read_from_the_prompt_only() -> None:
    assert think_opener("<|im_start|>assistant\n<think>\n") == "<think>\n"
    assert think_opener("Compute 1+2. </think>") == ""
    assert think_opener("<think>reasoning</think>\n") == ""  # a closed, non-empty block is the prompt's own text
    parsed = [{"role": "assistant", "reasoning_content": "1+2=3", "content": " 3"}]
    assert with_opener(parsed, "<think>\n") == parsed  # the reasoning is kept apart: the rewards rebuild the tags
