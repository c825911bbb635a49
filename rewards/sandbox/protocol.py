"""The host's half of the wire protocol with the supervisor (its half is at the top of supervisor.py).

Host → supervisor, on its stdin: jobs, each `supervisor.HEADER_BYTES` of little-endian length and a
marshal'ed dict (marshal, format `supervisor.MARSHAL_VERSION`: any Python reads it, no json import
inside, no pickle code to run). Supervisor → host, on its stdout: one line per record, the repr() of
a dict of literals, read with `ast.literal_eval` (which evaluates nothing): `{"compile": result}`,
`{"test": i, "result": result}`, and `{"done": True}` once the job is over and the sandbox clean.
Expected outputs never enter the sandbox: a job holds the programs' inputs only.
"""

from __future__ import annotations

import ast
import functools
import marshal
import threading
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import rewards.sandbox.harness as harness  # the module's file, shipped as text; importing it runs nothing
from rewards.sandbox.bwrap import ENV
from rewards.sandbox.languages import Language
from rewards.sandbox.results import Limits, RunResult
from rewards.sandbox.supervisor import HEADER_BYTES, MARSHAL_VERSION


def make_job(language: Language, code: str, inputs: Sequence[str], *, check: bool, limits: Limits,
             harness: bool = False, prelude: str = "") -> dict[str, Any]:
    """One call for the supervisor: compile `code` once (if the language compiles), run it on each input.

    `harness`: Python only; each input is a test's spec for `harness.py`, which runs the tests in one
    process and `code` in another (the pass decision cannot be forged from the candidate's process).
    """
    source = language.source_name(code)
    stem = source.rsplit(".", 1)[0]

    def fill(argv: Sequence[str]) -> list[str]:  # {dir} is the supervisor's to fill: only it knows the directory
        return [arg.replace("{stem}", stem).replace("{memory_mb}", str(limits.memory_mb)) for arg in argv]

    return {"language": language.name, "source": code, "source_name": source, "compile": fill(language.compile),
            "run": None if language.run is None else fill(language.run), "keep": list(language.keep),
            "memory_markers": list(language.memory_markers), "tests": list(inputs), "check": check or harness,
            "harness": harness_source() if harness else None, "prelude": prelude, "limits": asdict(limits),
            "address_space_mb": language.address_space_mb,
            "env": {**ENV, **dict(language.env), "PATH": language.search_path()},
            "total_timeout_s": limits.total_timeout_s}


def language_limits(language: Language, limits: Limits) -> Limits:
    """`limits`, raised to what `language`'s compiler and runtime need (never lowered)."""
    return replace(limits, max_processes=max(limits.max_processes, language.processes),
                   tmp_mb=max(limits.tmp_mb, language.tmp_mb),
                   compile_memory_mb=max(limits.compile_memory_mb, language.compile_memory_mb))


@functools.lru_cache(maxsize=1)
def harness_source() -> str:
    """The text of harness.py, which the tests' process runs inside the sandbox."""
    return Path(harness.__file__).read_text(encoding="utf-8")


def encode_job(job: dict[str, Any]) -> bytes:
    """A job as it goes on the wire: its length, then its marshal bytes."""
    payload = marshal.dumps(job, MARSHAL_VERSION)
    return len(payload).to_bytes(HEADER_BYTES, "little") + payload


def host_timeout(language: Language, n_inputs: int, limits: Limits) -> float:
    """How long the host waits for a job's answer before it kills the sandbox: every bound the supervisor
    enforces itself, plus slack. Only a supervisor that is stopped or stuck ever meets it."""
    per_test = limits.timeout_s + 0.5
    budget = limits.total_timeout_s if limits.total_timeout_s is not None else per_test * max(1, n_inputs)
    return 5.0 + budget + (limits.compile_timeout_s if language.compile else 0.0) + 0.5 * n_inputs


#: CPython 3.11 keeps the AST builder's recursion depth per interpreter, not per thread: two threads parsing at
#: once fail with "SystemError: AST constructor recursion depth mismatch". The code reward reads records on
#: a thread per row, so they take turns.
AST_LOCK = threading.Lock()


def decode_record(line: bytes) -> dict[str, Any] | None:
    """One record from a line of the supervisor, or None for anything that is not the repr() of a dict."""
    try:
        with AST_LOCK:
            record = ast.literal_eval(line.decode("utf-8", "replace"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


class RecordReader:
    """Turns the supervisor's stdout, in chunks as they come, into records; a partial line waits for the rest."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [record for record in map(decode_record, lines) if record is not None]


def collect_results(records: list[dict[str, Any]], n: int, end: str, detail: str,
                    host_timeout_s: float) -> tuple[RunResult | None, list[RunResult]]:
    """(compile result or None, one result per input) from a job's records.

    `end` is how the job ended ("done" | "timeout" | "died"); inputs without a record get a
    "timeout" or "killed" result saying so. A failed compile has no test results.
    """
    compile_result: RunResult | None = None
    results: list[RunResult | None] = [None] * n
    for record in records:
        if "compile" in record:
            compile_result = RunResult(**record["compile"])
        elif "test" in record and 0 <= record["test"] < n:
            results[record["test"]] = RunResult(**record["result"])
    if compile_result is not None and compile_result.status != "ok":
        return compile_result, []
    if end == "timeout":
        missing = RunResult("timeout", stderr=f"[sandbox] killed: the run took more than {host_timeout_s:g} s")
    else:
        missing = RunResult("killed", stderr="[sandbox] the test did not run: the sandbox ended early"
                                             + (f": {detail}" if detail else ""))
    return compile_result, [r if r is not None else replace(missing) for r in results]
