"""The `scripted` backend: a `module:function` teacher, for tests, tiny recipes and rule-based data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.core.errors import PluginError
from posttrain.core.generation.base import (
    BaseGenerator,
    GenerationError,
    Prompt,
    SamplingParams,
    check_shape,
    truncate_at_stop,
)


class ScriptedGenerator(BaseGenerator):
    """A `module:function` teacher: `fn(prompts, n, sampling, **options) -> list[list[str]]`.

    With tools, it is called with `tools=` (the tools' schemas) and chats that end with the conversation so far
    (its earlier turns and the tools' outputs), and returns each turn as a string (an answer) or a message dict
    (`{"role": "assistant", "content": ..., "tool_calls": [...]}` to call a tool)."""

    def __init__(self, ref: str, options: dict[str, Any] | None = None):
        from posttrain.core.plugins import load_object

        self.name = ref
        self.fn = load_object(ref)
        if not callable(self.fn):
            raise PluginError(f"scripted teacher {ref!r} is a {type(self.fn).__name__}, not a function")
        self.options = dict(options or {})

    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        sampling = sampling or SamplingParams()
        out = self.fn(list(prompts), n, sampling, **self.options)
        return [[truncate_at_stop(c, sampling.stop) for c in row] for row in check_shape(out, prompts, n, self.name)]

    def generate_turns(
        self, chats: Sequence[list[dict[str, Any]]], n: int, sampling: SamplingParams, tools: list[dict[str, Any]]
    ) -> tuple[list[list[dict[str, Any]]], list[str | None]]:
        outs: list[list[dict[str, Any]]] = []
        errors: list[str | None] = []
        for chat in chats:  # one at a time: a teacher that fails on one chat fails that chat only
            try:
                row = self.fn([chat], n, sampling, tools=tools, **self.options)
                if not isinstance(row, list) or len(row) != 1:
                    raise GenerationError(f"{self.name} returned {row!r:.200} for 1 chat (expected a list of one)")
                outs.append([_as_turn(turn, sampling, self.name) for turn in _n_turns(row[0], n, self.name)])
                errors.append(None)
            except Exception as exc:
                outs.append([])
                errors.append(str(exc) if isinstance(exc, GenerationError) else f"{type(exc).__name__}: {exc}")
        return outs, errors


def _n_turns(row: Any, n: int, who: str) -> list[Any]:
    if not isinstance(row, list) or len(row) != n:
        raise GenerationError(f"{who}: expected {n} turns for the chat, got {row!r:.200}")
    return row


def _as_turn(turn: Any, sampling: SamplingParams, who: str) -> dict[str, Any]:
    """A teacher's turn as a message: a string is an answer; a dict is a message, its calls checked."""
    if isinstance(turn, str):
        return {"role": "assistant", "content": truncate_at_stop(turn, sampling.stop)}
    if not isinstance(turn, dict) or not isinstance(turn.get("content", ""), str):
        raise GenerationError(f"{who}: a turn must be a string or an assistant message dict, got {turn!r:.200}")
    calls = turn.get("tool_calls") or []
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                              and isinstance(c["function"].get("name"), str) for c in calls):
        raise GenerationError(f"{who}: tool_calls must be [{{'type': 'function', 'function': {{'name': ..., "
                              f"'arguments': {{...}}}}}}], got {calls!r:.200}")
    message: dict[str, Any] = {"role": "assistant", "content": turn.get("content") or ""}
    if calls:
        message["tool_calls"] = [{"type": "function", "function": dict(c["function"])} for c in calls]
    return message
