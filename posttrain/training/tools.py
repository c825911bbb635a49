"""Tools in GRPO: the policy runs code in the sandbox mid-answer, through TRL's own tool loop, and learns from it.

TRL 1.16's `GRPOTrainer(tools=[...])` runs the loop (generate, parse each completion's tool calls with the
tokenizer's response parser, call the tools, append their outputs, generate again, at most
`max_tool_calling_iterations` times) with in-process generation and with vLLM. It builds each longer completion by
concatenating token ids (no re-tokenization) and marks the tools' outputs with a `tool_mask` of 0; the loss is taken
over `completion_mask * tool_mask`, so the outputs are context the policy attends to, never tokens it is trained
to write (tests/posttrain/training/test_tools.py checks this on a real step). What posttrain adds:

- the tool as TRL takes it (`as_function`: a Python function named after the tool, whose signature and docstring
  give the schema the chat template shows), the markers of the template broken in its output (`neutralize`);
- `ToolMetricsMixin` (the `_calculate_rewards` hook, listed in grpo_trainer.py's table): per logging step, the
  calls per completion, the share of calls that failed, assistant turns, the share of completions that called a
  tool, the accuracy of those that did and of those that did not (a completion is correct when its weighted
  reward, over the weights' sum, reaches 1), and the seconds spent inside tool calls. TRL's own
  `tools/call_frequency` and `tools/failure_frequency` (exceptions only, which our tools never raise) stay;
  TRL's frequency also counts calls whose output it dropped because it would overflow `max_completion_length`
  (the completion then ends at the call), ours only the outputs the policy read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from posttrain.core.run_folder import TOOL_SECONDS
from posttrain.core.tool_calls import neutralize
from posttrain.core.tools import Tool, summarize_tool_use


def as_function(tool: Tool, markers: Sequence[str] = ()) -> Callable[..., str]:
    """`tool` as the plain function TRL's `tools=` and transformers' `apply_chat_template(tools=...)` take: named after
    the tool, its parameters (strings) in its signature and docstring; the tool's output with `markers` broken."""
    function = tool.schema()["function"]
    properties: dict[str, Any] = function.get("parameters", {}).get("properties", {})

    def call(**arguments: Any) -> str:
        return neutralize(str(tool(**arguments)), list(markers))

    call.__name__ = call.__qualname__ = tool.name
    call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str) for k in properties],
        return_annotation=str)
    call.__annotations__ = {**{k: str for k in properties}, "return": str}
    args = "\n".join(f"    {k}: {spec.get('description') or k}" for k, spec in properties.items())
    call.__doc__ = f"{function.get('description') or tool.name}\n\nArgs:\n{args}\n"
    return call


class ToolMetricsMixin:
    """For posttrain's GRPOTrainer: the tools' metrics of each scoring round (see the module docstring)."""

    _tool_objects: tuple[Any, ...] = ()
    _tool_threshold: float = 1.0

    def setup_tool_metrics(self, tools: Sequence[Any], threshold: float = 1.0) -> None:
        """Measure the use of `tools` (the objects behind the functions given to TRL; their `counters()` give the
        seconds spent in calls); a completion is correct when its normalised weighted reward reaches `threshold`."""
        self._tool_objects = tuple(tools)
        self._tool_threshold = threshold
        self._tool_seconds = self._seconds()

    def _seconds(self) -> float:
        return sum(t.counters()[2] for t in self._tool_objects if hasattr(t, "counters"))

    def _calculate_rewards(self, inputs: Any, prompts: list[Any], completions: list[Any],
                           completion_ids_list: Any) -> Any:
        import torch

        out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # type: ignore[misc]
        trainer: Any = self
        if not self._tool_objects or not getattr(trainer, "tools", None):
            return out
        n = len(completions)
        start = trainer.accelerator.process_index * n
        local = out[start:start + n] if out.shape[0] >= start + n else out[:n]
        weights = trainer.reward_weights.to(local.device)
        total = torch.nansum(local * weights.unsqueeze(0), dim=1) / weights.sum()
        correct = (total >= self._tool_threshold).tolist()
        mode = "train" if trainer.model.training else "eval"
        for key, value in summarize_tool_use(completions, correct).items():
            trainer._metrics[mode][key].append(value)
        seconds = self._seconds()
        trainer._metrics[mode][TOOL_SECONDS].append(seconds - self._tool_seconds)
        self._tool_seconds = seconds
        return out
