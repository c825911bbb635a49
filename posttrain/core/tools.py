"""Tools the model calls mid-answer: the recipe key that names them, what a tool is, and what a tool-using answer is.

A stage that generates (`eval`, `pass_rate_filter`, `distill`, `grpo`) takes `tools: [{name: python, timeout_s: 5,
max_output_chars: 2000}]` and `max_turns`. A tool named after a sandbox language (`python`, `bash`, `javascript`,
...) runs the code it is given in a fresh sandbox, with the code reward's containment (`rewards/sandbox/tool.py`
builds it); the stage hands the tool to the engine's tool loop (`posttrain/core/generation/tool_loop.py`, TRL's own
loop in GRPO). A completion that used tools is a conversation: `[assistant (tool_calls), tool, assistant, ...]`,
TRL's shape. The model's part is its assistant turns; the tools' outputs are context (`answer_turns`), never
scored as the model's answer and masked from every loss.

A tool's failure is text the model reads, never an exception: its output ends with a line `[tool error: <status>]`
(`error_output`), which is also how the metrics here count errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from pydantic import ConfigDict, Field

from posttrain.core.identity import ADDED, MarkedModel
from posttrain.core.run_folder import (
    TOOL_ACCURACY_WITH_CALL,
    TOOL_ACCURACY_WITHOUT_CALL,
    TOOL_CALLS,
    TOOL_ERROR_RATE,
    TOOL_TURNS,
    TOOL_USED,
)

#: The last line of a tool output that failed: `[tool error: timeout after 5 s]`.
ERROR_MARK = "[tool error: "


class ToolSpec(MarkedModel):
    """One tool of a stage's `tools:` list: a sandbox language the model may run code in."""

    model_config = ConfigDict(extra="forbid")

    #: The name the model calls it by (`python`); also the sandbox language unless `language` says otherwise.
    name: Annotated[str, ADDED] = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    #: The sandbox language (python, bash, javascript, c, cpp, go, rust, java); default: `name`.
    language: Annotated[str | None, ADDED] = None
    #: Wall-clock seconds each call may run (compile time apart).
    timeout_s: Annotated[float, ADDED] = Field(5.0, gt=0)
    memory_mb: Annotated[int, ADDED] = Field(512, ge=16)
    #: The output the model sees, at most (the head and the tail are kept, the middle cut).
    max_output_chars: Annotated[int, ADDED] = Field(2000, ge=64)
    #: What the model is told the tool does (in the tool's schema, for templates that show it).
    description: Annotated[str | None, ADDED] = None

    @property
    def sandbox_language(self) -> str:
        return self.language or self.name


class ToolOptions(MarkedModel):
    """The options of a stage whose model may call tools (`eval`, `pass_rate_filter`, `distill`, `grpo`)."""

    #: Tools the model may call mid-answer, each run in the code sandbox: `[{name: python, timeout_s: 5,
    #: max_output_chars: 2000}]` (a tool is named after a sandbox language, or sets `language`). Empty: no tools.
    tools: Annotated[list[ToolSpec], ADDED] = Field(default_factory=list)
    #: With tools: assistant turns per completion at most (a call made in the last one is not run).
    max_turns: Annotated[int, ADDED] = Field(4, ge=1, le=64)


class Tool(Protocol):
    """What a tool loop calls: `tool(**arguments) -> str`, never raising for anything the model did."""

    name: str

    def schema(self) -> dict[str, Any]:
        """The tool as chat templates take it: `{"type": "function", "function": {name, description, parameters}}`."""
        ...

    def __call__(self, **arguments: Any) -> str: ...


def error_output(text: str, status: str) -> str:
    """A tool's output that failed: what it printed, then the status line the model (and the metrics) read.

    >>> error_output("Traceback ...\\nZeroDivisionError: division by zero\\n", "runtime_error, exit code 1")
    'Traceback ...\\nZeroDivisionError: division by zero\\n[tool error: runtime_error, exit code 1]'
    """
    head = text if not text or text.endswith("\n") else text + "\n"
    return f"{head}{ERROR_MARK}{status}]"


def is_error_output(text: Any) -> bool:
    """Whether a tool output says its call failed (its last line is the status line of `error_output`)."""
    lines = str(text or "").rstrip().splitlines()
    return bool(lines) and lines[-1].startswith(ERROR_MARK)


def is_conversation(completion: Any) -> bool:
    """A completion that is a list of messages (TRL's conversational shape), e.g. a tool-using answer."""
    return isinstance(completion, list) and all(isinstance(m, dict) for m in completion)


@dataclass(frozen=True)
class ToolUse:
    """One completion's use of its tools: calls made (outputs received), calls that failed, assistant turns."""

    calls: int
    errors: int
    turns: int


def tool_use(completion: Any) -> ToolUse:
    """How a completion used its tools (a plain string: no call, one turn).

    >>> tool_use([{"role": "assistant", "content": "", "tool_calls": [{}]},
    ...           {"role": "tool", "content": "[tool error: timeout]"}, {"role": "assistant", "content": "5"}])
    ToolUse(calls=1, errors=1, turns=2)
    """
    if not is_conversation(completion):
        return ToolUse(0, 0, 1)
    outputs = [m.get("content") for m in completion if m.get("role") == "tool"]
    turns = sum(1 for m in completion if m.get("role") == "assistant")
    return ToolUse(len(outputs), sum(is_error_output(o) for o in outputs), max(turns, 1))


def summarize_tool_use(completions: Sequence[Any], correct: Sequence[bool] | None = None) -> dict[str, float]:
    """The tool metrics of a set of completions (run_folder's `tools/...` keys): calls per completion, the share of
    calls that failed, assistant turns, the share of completions that made a call, and (given which are correct)
    the accuracy of those with a call and of those without."""
    uses = [tool_use(c) for c in completions]
    if not uses:
        return {}
    calls = sum(u.calls for u in uses)
    out: dict[str, float] = {
        TOOL_CALLS: round(calls / len(uses), 4),
        TOOL_TURNS: round(sum(u.turns for u in uses) / len(uses), 4),
        TOOL_USED: round(sum(u.calls > 0 for u in uses) / len(uses), 4),
    }
    if calls:
        out[TOOL_ERROR_RATE] = round(sum(u.errors for u in uses) / calls, 4)
    if correct is not None:
        for key, used in ((TOOL_ACCURACY_WITH_CALL, True), (TOOL_ACCURACY_WITHOUT_CALL, False)):
            hits = [ok for u, ok in zip(uses, correct, strict=True) if (u.calls > 0) == used]
            if hits:
                out[key] = round(sum(hits) / len(hits), 4)
    return out


def answer_turns(completion: Any) -> list[dict[str, Any]]:
    """The model's own turns of a conversation (its assistant messages), without the tools' outputs."""
    return [m for m in completion if m.get("role") == "assistant"] if is_conversation(completion) else []
