"""What a tool-using answer is, and the figures of how a set of answers used their tools."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from posttrain.core.tools import ToolSpec, ToolUse, error_output, is_error_output, summarize_tool_use, tool_use

CALL = {"role": "assistant", "content": "<think>run it</think>",
        "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": "print(1)"}}}]}


def conv(*outputs: str) -> list[dict]:
    out: list[dict] = []
    for text in outputs:
        out += [CALL, {"role": "tool", "name": "python", "content": text}]
    return [*out, {"role": "assistant", "content": "The answer is 1."}]


def test_an_error_output_ends_with_its_status_line() -> None:
    assert error_output("", "timeout after 5 s") == "[tool error: timeout after 5 s]"
    assert is_error_output(error_output("partial\n", "killed"))
    assert not is_error_output("1\n") and not is_error_output("") and not is_error_output(None)
    assert not is_error_output("[tool error: fake]\nbut then more output")  # only the last line says it


def test_tool_use_counts_outputs_failures_and_the_model_s_turns() -> None:
    assert tool_use("The answer is 1.") == tool_use([{"role": "assistant", "content": "1"}]) == ToolUse(0, 0, 1)
    assert tool_use(conv("1\n", error_output("", "killed"))) == ToolUse(calls=2, errors=1, turns=3)


def test_the_summary_splits_accuracy_by_whether_a_tool_was_called() -> None:
    completions = [conv("1\n"), conv("1\n"), conv(error_output("x", "runtime error")), "plain", "plain"]
    correct = [True, True, False, True, False]
    out = summarize_tool_use(completions, correct)
    assert out == {"tools/calls_per_completion": 0.6, "tools/turns": 1.6, "tools/used": 0.6,
                   "tools/error_rate": pytest.approx(1 / 3, abs=1e-4),
                   "tools/accuracy_with_call": pytest.approx(2 / 3, abs=1e-4),
                   "tools/accuracy_without_call": 0.5}
    assert "tools/error_rate" not in summarize_tool_use(["plain"])  # no call: no rate
    assert summarize_tool_use([]) == {}


def test_a_tool_spec_names_a_language_and_its_bounds() -> None:
    spec = ToolSpec(name="python")
    assert (spec.sandbox_language, spec.timeout_s, spec.max_output_chars) == ("python", 5.0, 2000)
    assert ToolSpec(name="shell", language="bash").sandbox_language == "bash"
    for bad in ({"name": "my tool"}, {"name": "python", "timeout_s": 0}, {"name": "python", "extra": 1}):
        with pytest.raises(ValidationError):
            ToolSpec(**bad)
