"""`Sandbox`: checks once that a sandbox can start here, then runs programs in the thread's kept sandbox."""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from posttrain.core.errors import DataError
from rewards.sandbox.bwrap import FIX, SandboxUnavailable, command, sandbox_python, unsandboxed
from rewards.sandbox.languages import TABLE, check_toolchain, host_binds, normalize_language
from rewards.sandbox.protocol import collect_results, encode_job, host_timeout, language_limits, make_job
from rewards.sandbox.results import Limits, RunResult
from rewards.sandbox.session import Session, Sessions
from rewards.sandbox.uids import UIDS

log = logging.getLogger("posttrain.rewards.sandbox")

#: What tells sessions apart: (isolated, tmp_mb, max_processes), the bounds fixed when a sandbox starts.
SessionKey = tuple[bool, int, int]


class Sandbox:
    """Runs programs in bubblewrap (or, only if allowed and bubblewrap cannot work, without isolation).

    `check()` probes once that a sandbox starts here; without one it raises SandboxUnavailable naming
    the fix, unless `allow_unsandboxed=True`, which logs a loud warning and runs programs as plain
    processes (limits still applied, no isolation). `python` is the interpreter used inside
    (default: the system's `/usr/bin/python3`); `bwrap` the bubblewrap binary (default: $POSTTRAIN_BWRAP,
    else `bwrap` on PATH). `reuse=False` starts a new sandbox per call instead of keeping one per thread.
    """

    def __init__(self, limits: Limits | None = None, *, allow_unsandboxed: bool = False, python: str | None = None,
                 bwrap: str | None = None, seccomp: bool = True, reuse: bool = True):
        self.limits = (limits or Limits()).check()
        self.allow_unsandboxed = bool(allow_unsandboxed)
        self.python, self._python_binds = sandbox_python(python)
        self.bwrap = bwrap or os.environ.get("POSTTRAIN_BWRAP") or shutil.which("bwrap") \
            or shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")
        self.seccomp = bool(seccomp)
        self.isolated: bool | None = None  # None until check()
        self.unavailable_reason = ""
        self.reuse = bool(reuse)
        self._lock = threading.Lock()
        self._sessions = Sessions(self._start)
        self._root = os.geteuid() == 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["_sessions"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._sessions = Sessions(self._start)

    # ------------------------------------------------------------ probing

    def check(self) -> Sandbox:
        """Make sure programs can run; raise SandboxUnavailable (naming the fix) if only unsafely and not allowed."""
        with self._lock:
            if self.isolated is not None:
                return self
            why = self._probe()
            if why is None:
                self.isolated = True
                return self
            self.unavailable_reason = why
            fix = FIX
            if self._python_binds:
                fix = (f"make the interpreter {self.python} readable by every user (the sandbox runs as an "
                       "unprivileged uid), install python3 under /usr (`apt-get install python3`), or pass "
                       f"python=... (the code reward's `python` option); or {FIX}")
            if not self.allow_unsandboxed:
                raise SandboxUnavailable(f"cannot run untrusted code in a sandbox: {why}. To fix: {fix}")
            log.warning("!!! RUNNING UNTRUSTED CODE WITHOUT A SANDBOX (allow_unsandboxed=True): %s. Programs run as "
                        "this user, see this machine's files and network, and may leave processes behind. "
                        "To fix: %s", why, fix)
            self.isolated = False
            return self

    def _probe(self) -> str | None:
        if not self.bwrap or not os.access(self.bwrap, os.X_OK):
            return f"bubblewrap (`bwrap`) is not installed{f' at {self.bwrap}' if self.bwrap else ''}"
        if not os.access(self.python, os.X_OK):
            return f"no Python interpreter at {self.python}"
        try:
            compile_ok, results = self._execute("python", "import sys; print(sys.version_info >= (3, 8))", [""],
                                                check=False, limits=replace(self.limits, timeout_s=20.0),
                                                isolated=True, host_timeout_s=60.0)
        except OSError as exc:
            return f"bubblewrap failed to start: {exc}"
        result = results[0] if results else compile_ok
        if result is None or result.status != "ok" or result.stdout.strip() != "True":
            detail = (result.stderr.strip()[-500:] if result is not None else "") or "no output"
            return f"a test sandbox did not run ({detail})"
        return None

    # ------------------------------------------------------------ public verbs

    def run(self, code: str, language: str = "python", stdin: str = "", **limits: Any) -> RunResult:
        """Run one program on one input; see `rewards.sandbox.run`."""
        compile_result, results = self.run_tests(code, language, [stdin], **limits)
        return compile_result if compile_result is not None and not results else results[0]

    def run_tests(self, code: str, language: str, inputs: Sequence[str], check: bool = False,
                  **limits: Any) -> tuple[RunResult | None, list[RunResult]]:
        """(compile result or None, one result per input): compiled once, each input in a fresh process.

        With `check=True` a Python program `passed` only if it ran to its end: no exception, no
        `sys.exit`/`os._exit`, whatever the exit code. That says the program finished; it is no
        verdict a test can rely on (the program could write the token itself): tests go through
        `run_harness`. On a compile error there are no test results.
        """
        self.check()
        name = normalize_language(language)
        if check and name != "python":
            raise DataError("check-style tests are Python only")
        check_toolchain(name)
        bounds = replace(self.limits, **limits).check() if limits else self.limits
        return self._execute(name, code, list(inputs), check=check, limits=bounds, isolated=bool(self.isolated))

    def run_harness(self, code: str, specs: Sequence[dict[str, Any]],
                    **limits: Any) -> tuple[RunResult | None, list[RunResult]]:
        """Python tests that call into `code` (see `harness.py`): one result per spec, `passed` set by the harness.

        Each test runs in a process of its own that never runs the candidate's code: that runs in a
        second process (one per call, kept across its tests), which gets calls and sends back plain
        values. So nothing the candidate does makes a test pass but returning the right values. A
        `call` spec's result is its stdout (JSON).
        """
        self.check()
        bounds = replace(self.limits, **limits).check() if limits else self.limits
        inputs = [marshal.dumps(dict(spec), 4).hex() for spec in specs]
        prelude = next((spec["prelude"] for spec in specs if spec.get("prelude")), "")
        return self._execute("python", code, inputs, check=True, harness=True, prelude=prelude, limits=bounds,
                             isolated=bool(self.isolated))

    def run_check(self, code: str, test: str, entry_point: str, **limits: Any) -> RunResult:
        """HumanEval style: `check(entry_point)` of `test` against `code`, through the harness.

        `passed` is True only if check() returned; the exit code does not decide it, nor can the
        candidate's code (it runs in another process than check()).
        """
        if not isinstance(entry_point, str) or not entry_point.isidentifier():
            raise DataError(f"entry_point must be a Python identifier, got {entry_point!r}")
        spec = {"kind": "check", "test": test, "entry_point": entry_point}
        compile_result, results = self.run_harness(code, [spec], **limits)
        if not results:
            assert compile_result is not None
            compile_result.passed = False
            return compile_result
        return results[0]

    def close(self) -> None:
        """End every idle sandbox of this object (all threads'); runs in progress must be finished."""
        self._sessions.close()

    # ------------------------------------------------------------ launching

    def _execute(self, name: str, code: str, inputs: list[str], *, check: bool, limits: Limits, isolated: bool,
                 host_timeout_s: float | None = None, harness: bool = False,
                 prelude: str = "") -> tuple[RunResult | None, list[RunResult]]:
        entry = TABLE[name]
        limits = language_limits(entry, limits)
        payload = encode_job(make_job(entry, code, inputs, check=check, limits=limits, harness=harness,
                                      prelude=prelude))
        if host_timeout_s is None:
            host_timeout_s = host_timeout(entry, len(inputs), limits)
        key: SessionKey = (isolated, limits.tmp_mb, limits.max_processes)
        for attempt in range(2):
            session, fresh = self._sessions.get(key)
            records, end, detail = session.request(payload, host_timeout_s)
            if end != "done" or not self.reuse:
                self._sessions.discard(key, session)
            # A reused session found dead before it answered anything (e.g. its thread's pool was shut down):
            # start a fresh one and run the job there, once.
            if end == "died" and not records and not fresh and attempt == 0:
                continue
            return collect_results(records, len(inputs), end, detail, host_timeout_s)
        raise AssertionError("unreachable")

    def _start(self, key: SessionKey) -> Session:
        """A new sandbox with the bounds of `key`, as an unprivileged uid of its own when this process is root."""
        isolated, tmp_mb, max_processes = key
        stack = contextlib.ExitStack()
        try:
            if isolated:
                uid = stack.enter_context(UIDS.slot()) if self._root else None
                assert self.bwrap is not None
                launch = command(self.bwrap, self.python, self._python_binds + host_binds(), uid, tmp_mb, self.seccomp)
                workdir = "/tmp"
            else:
                workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="posttrain-unsandboxed-"))
                launch = unsandboxed(self.python, workdir)
            launch.argv += [workdir, "1" if isolated else "0", str(max_processes)]
        except BaseException:
            stack.close()
            raise
        return Session(launch, stack)

