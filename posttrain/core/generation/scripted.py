"""The `scripted` backend: a `module:function` teacher, for tests, tiny recipes and rule-based data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.core.errors import PluginError
from posttrain.core.generation.base import BaseGenerator, Prompt, SamplingParams, check_shape, truncate_at_stop


class ScriptedGenerator(BaseGenerator):
    """A `module:function` teacher: `fn(prompts, n, sampling, **options) -> list[list[str]]`."""

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
