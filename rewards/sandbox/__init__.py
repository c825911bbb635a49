"""Run untrusted programs (Python, C, C++, JavaScript, Java, Go, Rust, Bash) locally, contained by bubblewrap.

DeepSeek-V3 rewards code with compiler and test feedback, which means running what a policy wrote,
thousands of times per training step. Here every program runs inside a bubblewrap sandbox:

- namespaces: a new user, PID, network (nothing reachable, not even the host's 127.0.0.1), IPC, UTS
  and mount namespace; no further user namespaces; a new session; it dies with its parent.
- files: the system's `/usr` (and `/bin`, `/lib`… links) read-only, a few harmless `/etc` files, a
  private size-capped `/tmp` and `/dev/shm`, a fresh `/proc`; no checkout, `$HOME` or host `/tmp`.
  The root and `/dev` are read-only.
- identity: bubblewrap starts with an empty environment (so `/proc/1/environ` holds nothing of the
  host's) and the program sees only PATH/HOME/LANG/TMPDIR. All capabilities are dropped. When this
  process is root, bubblewrap runs as an unprivileged uid of its own (one per live sandbox), since
  the kernel does not enforce RLIMIT_NPROC for uid 0.
- limits, per run: wall time, CPU time, address space, processes, file size, open files, output.
  A seccomp filter refuses ptrace, bpf, keyctl, io_uring, perf, mount and module syscalls.
- cleanup: every process a program started is killed and reaped before the next test starts and
  before `run` returns; a timed-out sandbox is torn down by killing its PID namespace's init, which
  the kernel only lets exit once every process in it is gone.

Inside, a small supervisor (`supervisor.py`, run by the system's Python) compiles the program once,
then runs each test in a fresh child (a fork of itself for Python, so there is no interpreter
start-up per test; an exec of the binary or the interpreter otherwise), kills everything that test left, wipes
`/tmp` and `/dev/shm`, and reports one record per test. Expected outputs never enter the sandbox.

Each thread keeps its sandbox and sends it the next program (`reuse=True`, the default): programs
run one after another in it, each in fresh processes, on an emptied /tmp, with System V and POSIX
message-queue IPC refused, so that nothing of one reaches the next. The supervisor itself is out of
their reach (non-dumpable, a result channel they never hold); a program that kills or stops it
only ends that sandbox, and the next call starts a new one. `reuse=False` starts one per call.

Tests that call into a Python program (HumanEval's check(), asserts, call-based tests) go through
`harness.py`: the tests run in one process, the candidate's code in another that only exchanges
plain values with it, so nothing the candidate does in its process can make a test pass
(`Sandbox.run_harness`, `Sandbox.run_check`).

The package, one concern per module: `runner` (Sandbox), `session` (a kept sandbox, per thread),
`protocol` (the host's half of the wire format), `supervisor` (what runs inside), `harness` (the
tests' side of call-style tests, inside), `bwrap` (the
command line), `seccomp` (the filter), `uids` (a uid per live sandbox), `languages` (what each
language compiles and runs with), `results` (Limits, RunResult).

>>> run("print(sum(map(int, input().split())))", stdin="2 3").stdout
'5\\n'
"""

from __future__ import annotations

import threading
from typing import Any

from rewards.sandbox.bwrap import SandboxUnavailable
from rewards.sandbox.languages import LANGUAGES, normalize_language
from rewards.sandbox.results import STATUSES, Limits, RunResult
from rewards.sandbox.runner import Sandbox
from rewards.sandbox.seccomp import seccomp_filter
from rewards.sandbox.uids import SANDBOX_UID_BASE

_DEFAULT: dict[bool, Sandbox] = {}
_DEFAULT_LOCK = threading.Lock()


def default_sandbox(allow_unsandboxed: bool = False) -> Sandbox:
    """A shared Sandbox with default limits (probed on first use)."""
    with _DEFAULT_LOCK:
        if allow_unsandboxed not in _DEFAULT:
            _DEFAULT[allow_unsandboxed] = Sandbox(allow_unsandboxed=allow_unsandboxed)
        return _DEFAULT[allow_unsandboxed]


def run(code: str, language: str = "python", stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512,
        allow_unsandboxed: bool = False, **limits: Any) -> RunResult:
    """Run `code` (python | c | cpp | javascript | java | go | rust | bash) on `stdin` in a sandbox; compile first.

    Returns a RunResult: `status` in {ok, runtime_error, compile_error, timeout, memory_limit, killed},
    capped `stdout`/`stderr`, `exit_code` (negative: killed by that signal), `wall_s`. Other limits
    (`compile_timeout_s`, `max_output_bytes`, `max_processes`, `tmp_mb`, …) as in `Limits`.
    Raises SandboxUnavailable if no sandbox can start here, unless `allow_unsandboxed=True`.
    """
    return default_sandbox(allow_unsandboxed).run(code, language, stdin, timeout_s=timeout_s, memory_mb=memory_mb,
                                                  **limits)


__all__ = ["LANGUAGES", "SANDBOX_UID_BASE", "STATUSES", "Limits", "RunResult", "Sandbox", "SandboxUnavailable",
           "default_sandbox", "normalize_language", "run", "seccomp_filter"]
