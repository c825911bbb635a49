"""The sandbox as a tool the policy calls mid-answer: `python(code)` (or any sandbox language) returns what the
program printed, as text the model reads next.

Each call runs like a `code` reward's program: in the thread's kept sandbox, in fresh processes on an emptied
/tmp, with the same limits and containment (namespaces, seccomp, rlimits, a uid of its own when root), so
nothing of one call (files, processes, IPC) reaches the next, another rollout's, or the host. What the model
did wrong is the tool's output, never an exception: a crash or a compile error shows its stderr, a timeout or
a memory kill says so, bad arguments say what was expected; each such output ends with the status line of
`posttrain.core.tools.error_output`. Output is capped at `max_output_chars` (head and tail kept).

>>> tool = SandboxTool("python")  # doctest: +SKIP
>>> tool(code="print(3142 * 2718)")  # doctest: +SKIP
'8539956\\n'
"""

from __future__ import annotations

import threading
import time
from typing import Any

from posttrain.core.errors import DataError, MissingDependencyError, PluginError
from posttrain.core.tools import ToolSpec, error_output
from rewards.sandbox.languages import TABLE, check_toolchain, normalize_language
from rewards.sandbox.results import Limits, RunResult
from rewards.sandbox.runner import Sandbox


class SandboxTool:
    """A tool that runs the code it is given in the sandbox (`ToolSpec`'s options); counts its calls, failures and
    seconds (for the stage's metrics). Creating it checks that a sandbox starts here (SandboxUnavailable names the
    fix) and that the language's toolchain is installed."""

    def __init__(self, name: str, language: str | None = None, timeout_s: float = 5.0, memory_mb: int = 512,
                 max_output_chars: int = 2000, description: str | None = None, python: str | None = None,
                 allow_unsandboxed: bool = False):
        try:
            self.language = normalize_language(language or name)
            check_toolchain(self.language)
            limits = Limits(timeout_s=float(timeout_s), memory_mb=int(memory_mb)).check()
        except MissingDependencyError as exc:
            raise MissingDependencyError(f"tool {name!r}: {exc}") from None
        except DataError as exc:
            raise PluginError(f"tool {name!r}: {exc}") from None
        self.name = name
        self.max_output_chars = int(max_output_chars)
        self.description = description or (f"Run a {TABLE[self.language].name} program in a sandbox and return what "
                                           "it printed (stdout, then stderr).")
        self.sandbox = Sandbox(limits, allow_unsandboxed=allow_unsandboxed, python=python).check()
        self._lock = threading.Lock()
        self.calls = self.errors = 0
        self.seconds = 0.0

    @classmethod
    def from_spec(cls, spec: ToolSpec, **options: Any) -> SandboxTool:
        return cls(spec.name, spec.sandbox_language, spec.timeout_s, spec.memory_mb, spec.max_output_chars,
                   spec.description, **options)

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": {"type": "object", "required": ["code"], "properties": {
                "code": {"type": "string", "description": f"the complete {self.language} program to run"}}}}}

    def __call__(self, **arguments: Any) -> str:
        started = time.perf_counter()
        code = arguments.get("code")
        if not isinstance(code, str) or set(arguments) - {"code"}:
            text = error_output("", f"bad arguments {sorted(arguments)}: expected one string argument `code`")
            failed = True
        else:
            try:
                result = self.sandbox.run(code, self.language)
            except Exception as exc:  # the sandbox itself failed: the model reads it, the stage goes on
                result = RunResult("killed", stderr=f"the sandbox failed: {type(exc).__name__}: {exc}")
            text, failed = self._render(result), not result.ok
        with self._lock:
            self.calls += 1
            self.errors += failed
            self.seconds += time.perf_counter() - started
        return text

    def _render(self, result: RunResult) -> str:
        text = result.stdout + (result.stderr if result.stderr.strip() else "")
        text = cap(text, self.max_output_chars)
        if result.ok:
            return text
        status = result.status.replace("_", " ")
        if result.status == "timeout":
            status += f" after {self.sandbox.limits.timeout_s:g} s"
        elif result.status == "runtime_error" and result.exit_code is not None:
            status += f", exit code {result.exit_code}"
        return error_output(text, status)

    def close(self) -> None:
        """End the sandboxes this tool keeps (one per thread that called it)."""
        self.sandbox.close()

    def counters(self) -> tuple[int, int, float]:
        """(calls, failed calls, seconds in calls) so far."""
        with self._lock:
            return self.calls, self.errors, self.seconds


def cap(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters: its head and tail, and how much was cut between them.

    >>> cap("a" * 30 + "b" * 30, 20)
    'aaaaaaaaaa\\n[... 40 characters cut ...]\\nbbbbbbbbbb'
    """
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"
