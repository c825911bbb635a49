"""Generation with tools: the model writes a turn, a tool call in it runs, its output joins the chat, the model goes on.

`ToolLoop` wraps any generator (`hf`, `vllm`, `openai`, `scripted`) and is used like one: `generate(prompts, n,
sampling)` gives n completions per prompt, each a conversation `[assistant, tool, assistant, ...]` (TRL's shape
of a tool-using completion). One step of the loop is the engine's `generate_turns` (the chats so far, the tools'
schemas given to the chat template, the turn read back into `content` and `tool_calls`); between steps every call
of every live conversation runs on a pool of threads that lives as long as the loop (each keeps its sandbox warm).
A conversation ends with a turn that calls nothing, or after `max_turns` turns (a call in the last turn is not
run). A call to an unknown tool, with arguments that are not a JSON object, or that raised, is answered with an
error output the model reads; the tool's markers in an output are broken (`neutralize`) so that a program cannot
close its own output and write in the model's place.

Sampling: the first turn draws `n` samples per prompt; each later turn draws one per conversation, which differ
already. `last_lengths` counts the tokens the model generated over all its turns (the tools' outputs are not its
tokens), when the engine reports its counts (`hf`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from posttrain.core.generation.base import GenerationError, Prompt, SamplingParams, as_messages
from posttrain.core.tool_calls import call_arguments, control_markers, neutralize
from posttrain.core.tools import Tool, error_output

log = logging.getLogger("posttrain.generation")

Conversation = list[dict[str, Any]]


class ToolLoop:
    """A generator whose completions may call `tools`, for at most `max_turns` assistant turns each."""

    def __init__(self, generator: Any, tools: Sequence[Tool], max_turns: int = 4, workers: int = 8):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.generator = generator
        self.tools = {tool.name: tool for tool in tools}
        self.schemas = [tool.schema() for tool in tools]
        self.max_turns = max_turns
        self.workers = max(1, workers)
        self.name = getattr(generator, "name", "generator")
        self.markers = control_markers(getattr(generator, "tokenizer", None))
        #: Tokens each completion of the last call took over all its turns (None where the engine counts none).
        self.last_lengths: list[list[int]] | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def tokenizer(self) -> Any:
        return getattr(self.generator, "tokenizer", None)

    @property
    def draft_stats(self) -> Any:
        return getattr(self.generator, "draft_stats", None)

    def generate(self, prompts: Sequence[Prompt], n: int = 1,
                 sampling: SamplingParams | None = None) -> list[list[Conversation]]:
        outs, errors = self.generate_with_errors(prompts, n, sampling)
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise GenerationError(failed)
        return outs

    def generate_with_errors(self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
                             ) -> tuple[list[list[Conversation]], list[str | None]]:
        sampling = sampling or SamplingParams()
        chats = [as_messages(p) for p in prompts]
        first, errors = self.generator.generate_turns(chats, n, sampling, self.schemas)
        lengths = self._lengths([len(row) for row in first])
        convs: list[list[Conversation]] = [[[turn] for turn in row] for row in first]
        for _ in range(1, self.max_turns):
            live = [(i, j) for i, row in enumerate(convs) if errors[i] is None
                    for j, conv in enumerate(row) if conv[-1].get("tool_calls")]
            if not live:
                break
            self._run_calls([convs[i][j] for i, j in live])
            turns, turn_errors = self.generator.generate_turns([chats[i] + convs[i][j] for i, j in live], 1,
                                                               sampling, self.schemas)
            counted = self._lengths([len(t) for t in turns])
            for k, ((i, j), turn, error) in enumerate(zip(live, turns, turn_errors, strict=True)):
                if error is not None:
                    errors[i] = errors[i] or error
                    continue
                convs[i][j].append(turn[0])
                if lengths is not None and counted is not None:
                    lengths[i][j] += counted[k][0]
            if counted is None:
                lengths = None
        self.last_lengths = lengths
        return [[] if errors[i] else row for i, row in enumerate(convs)], errors

    def _lengths(self, shape: list[int]) -> list[list[int]] | None:
        """The engine's token counts of its last call, if it reported them for every turn."""
        counted = getattr(self.generator, "last_lengths", None)
        if not isinstance(counted, list) or [len(c) for c in counted] != shape:
            return None
        return [list(c) for c in counted]

    def _run_calls(self, convs: list[Conversation]) -> None:
        """Run every tool call of the last turn of each conversation (all at once on the pool) and append the outputs
        in the order the calls were made."""
        jobs = [(conv, call) for conv in convs for call in conv[-1]["tool_calls"]]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="tool")
        for (conv, _), message in zip(jobs, self._pool.map(lambda job: self.call(job[1]), jobs), strict=True):
            conv.append(message)

    def call(self, call: dict[str, Any]) -> dict[str, Any]:
        """One tool call's output message (an error output for a call that cannot run)."""
        name, arguments = call_arguments(call)
        tool = self.tools.get(name)
        if tool is None:
            text = error_output("", f"no tool named {name!r}; the tools are {sorted(self.tools)}")
        elif arguments is None:
            text = error_output("", "the arguments are not a JSON object")
        else:
            try:
                text = tool(**arguments)
            except Exception as exc:  # a tool that raised: the model reads why, the stage goes on
                log.debug("tool %s raised", name, exc_info=True)
                text = error_output("", f"{type(exc).__name__}: {exc}")
        return {"role": "tool", "name": name, "content": neutralize(str(text), self.markers)}

    def close(self) -> None:
        """Stop the tools' threads and close the tools (their sandboxes end)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for tool in self.tools.values():
            if callable(getattr(tool, "close", None)):
                tool.close()
