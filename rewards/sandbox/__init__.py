"""Run untrusted Python, C and C++ locally, contained by bubblewrap: `run(code, language, stdin)`.

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

Inside, a small supervisor (`_supervisor`, run by the system's Python) compiles the program once,
then runs each test in a fresh child (a fork of itself for Python, so there is no interpreter
start-up per test; an exec of the binary for C/C++), kills everything that test left, wipes
`/tmp` and `/dev/shm`, and reports one line per test. Expected outputs never enter the sandbox.

Start-up (bubblewrap + an interpreter, ~15-25 ms) would dominate a HumanEval problem (~2 ms), so
each thread keeps its sandbox and sends it the next program (`reuse=True`, the default): programs
run one after another in it, each in fresh processes, on an emptied /tmp, with System V and POSIX
message-queue IPC refused, so that nothing of one reaches the next. The supervisor itself is out of
their reach (non-dumpable, a result channel they never hold); a program that kills or stops it
only ends that sandbox, and the next call starts a new one. `reuse=False` starts one per call.

>>> run("print(sum(map(int, input().split())))", stdin="2 3").stdout  # doctest: +SKIP
'5\\n'
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import json
import logging
import marshal
import os
import platform
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from posttrain.core.errors import DataError, MissingDependencyError

log = logging.getLogger("posttrain.rewards.sandbox")

STATUSES = ("ok", "runtime_error", "compile_error", "timeout", "memory_limit", "killed")
LANGUAGES = ("python", "c", "cpp")
_ALIASES = {"py": "python", "python3": "python", "c++": "cpp", "cxx": "cpp", "cplusplus": "cpp", "gcc": "c"}
#: Compiler command lines (run inside the sandbox, in its /tmp): source file, argv.
COMPILERS: dict[str, tuple[str, list[str]]] = {
    "c": ("main.c", ["gcc", "-O2", "-std=gnu17", "-pipe", "-o", "prog", "main.c", "-lm"]),
    "cpp": ("main.cpp", ["g++", "-O2", "-std=gnu++17", "-pipe", "-o", "prog", "main.cpp"]),
}
FIX = ("install bubblewrap (`make setup`, or `apt-get install bubblewrap`) and allow unprivileged user "
       "namespaces (`sysctl kernel.unprivileged_userns_clone=1`, `user.max_user_namespaces` > 0); or pass "
       "allow_unsandboxed=True to run untrusted code WITHOUT isolation")
#: First uid used for sandboxes when this process is root (bubblewrap then runs as BASE + slot).
SANDBOX_UID_BASE = 1_500_000_000
_INNER_UID = 1000
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/alternatives", "/etc/localtime")
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}


class SandboxUnavailable(MissingDependencyError):
    """Bubblewrap is missing or cannot create namespaces here, and running without isolation was not allowed."""


# ---------------------------------------------------------------- results and limits


@dataclass
class RunResult:
    """What one program run did. `status` is one of STATUSES; `passed` is set for check-style runs.

    `wall_s` is the program's own run time (the compiler's for a compile error), without sandbox
    start-up. `stdout`/`stderr` are capped (`truncated` says the cap was hit).
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    wall_s: float = 0.0
    passed: bool | None = None
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def reason(self) -> str:
        """One line for logs and reward errors: the status and the last line of stderr."""
        tail = next((line.strip() for line in reversed(self.stderr.strip().splitlines()) if line.strip()), "")
        return f"{self.status}: {tail[:300]}" if tail else self.status


@dataclass(frozen=True)
class Limits:
    """Per-run bounds. Times in seconds, sizes in MiB unless named in bytes.

    Memory is bounded per process (RLIMIT_AS: Linux has no per-user memory limit without cgroups),
    so one sandbox holds at most about `max_processes` × `memory_mb`, plus `tmp_mb` for /tmp and up
    to 16 MiB for /dev/shm.
    """

    timeout_s: float = 5.0
    memory_mb: int = 512
    compile_timeout_s: float = 30.0
    compile_memory_mb: int = 2048
    max_output_bytes: int = 1 << 20
    max_stderr_bytes: int = 64 << 10
    max_processes: int = 16
    max_file_mb: int = 16
    max_open_files: int = 256
    tmp_mb: int = 64
    #: Time for all tests of one call together (None: timeout_s per test); tests past it are not run.
    total_timeout_s: float | None = None

    def check(self) -> Limits:
        for name in ("timeout_s", "memory_mb", "compile_timeout_s", "compile_memory_mb", "max_output_bytes",
                     "max_stderr_bytes", "max_processes", "max_file_mb", "max_open_files", "tmp_mb"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise DataError(f"sandbox limit {name} must be a positive number, got {value!r}")
        if self.total_timeout_s is not None and self.total_timeout_s <= 0:
            raise DataError(f"sandbox limit total_timeout_s must be positive, got {self.total_timeout_s!r}")
        return self


def normalize_language(name: Any) -> str:
    """`python` | `c` | `cpp` from a column value (aliases: py, python3, c++, cxx); DataError otherwise.

    >>> normalize_language("C++"), normalize_language(None)
    ('cpp', 'python')
    """
    if name is None or (isinstance(name, str) and not name.strip()):
        return "python"
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LANGUAGES:
        raise DataError(f"unsupported language {name!r}: expected one of {', '.join(LANGUAGES)}")
    return key


# ---------------------------------------------------------------- seccomp


_DENIED_SYSCALLS = ("ptrace", "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key", "bpf",
                    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
                    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "mount",
                    "umount2", "pivot_root", "swapon", "swapoff", "reboot", "acct", "unshare", "setns", "syslog",
                    "quotactl", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
                    "name_to_handle_at", "open_by_handle_at",
                    # System V and POSIX message-queue IPC live in the IPC namespace, which outlives one program
                    # when a sandbox runs several in turn: refuse them rather than let them carry state across.
                    "shmget", "shmat", "shmctl", "semget", "semop", "semctl", "semtimedop", "msgget", "msgsnd",
                    "msgrcv", "msgctl", "mq_open", "mq_unlink")
_SYSCALLS = {
    # machine: (AUDIT_ARCH, {name: number}, x32 bit or 0)
    "x86_64": (0xC000003E, {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "keyctl": 250, "add_key": 248,
        "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 246, "kexec_file_load": 320,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "mount": 165, "umount2": 166,
        "pivot_root": 155, "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "unshare": 272,
        "setns": 308, "syslog": 103, "quotactl": 179, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "name_to_handle_at": 303, "open_by_handle_at": 304,
        "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220,
        "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241,
    }, 0x40000000),
    "aarch64": (0xC00000B7, {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "keyctl": 219, "add_key": 217,
        "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 104, "kexec_file_load": 294,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "mount": 40, "umount2": 39,
        "pivot_root": 41, "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89, "unshare": 97,
        "setns": 268, "syslog": 116, "quotactl": 60, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "name_to_handle_at": 264, "open_by_handle_at": 265,
        "shmget": 194, "shmat": 196, "shmctl": 195, "semget": 190, "semop": 193, "semctl": 191, "semtimedop": 192,
        "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "mq_open": 180, "mq_unlink": 181,
    }, 0),
}


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp program (bubblewrap's `--seccomp` format) refusing _DENIED_SYSCALLS with EPERM.

    Other architectures' syscalls (e.g. 32-bit ones on x86_64) kill the process; so do x32 calls.
    None on a machine without a table here (the sandbox then runs without a filter).
    """
    machine = machine or platform.machine()
    if machine not in _SYSCALLS:
        return None
    arch, numbers, x32 = _SYSCALLS[machine]
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill, eperm = 0x7FFF0000, 0x80000000, 0x00050000 | 1
    denied = sorted({numbers[name] for name in _DENIED_SYSCALLS})
    checks = [(jge, "kill", x32)] if x32 else []
    checks += [(jeq, "eperm", nr) for nr in denied]
    prog: list[tuple[int, int, int, int]] = [(ld_abs, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill),
                                             (ld_abs, 0, 0, 0)]
    end = len(prog) + len(checks)  # index of "allow"; "eperm" and "kill" follow it
    target = {"eperm": end + 1, "kill": end + 2}
    for code, where, k in checks:
        prog.append((code, target[where] - len(prog) - 1, 0, k))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm), (ret, 0, 0, kill)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


# ---------------------------------------------------------------- the supervisor (runs inside the sandbox)


def _supervisor() -> None:  # pragma: no cover - runs inside the sandbox, under the system's Python
    """Read jobs (marshal) on stdin; per job compile once, run each test in a fresh child; lines on stdout.

    Self-contained (only the standard library, Python >= 3.8): its source is what the sandbox runs.
    Children never hold the result channel, and this process is made non-dumpable so that a test
    cannot read or write its memory or fds through /proc.
    """
    import builtins
    import contextlib
    import marshal
    import os
    import resource
    import select
    import signal
    import sys
    import time
    import types

    # Jobs come as marshal (length-prefixed, one after another until EOF), results go out as repr() lines:
    # no json/traceback imports, which would double the start-up of this process.
    work, pidns, nproc = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    me = os.getpid()
    devnull = os.open("/dev/null", os.O_RDWR)
    jobs = os.dup(0)
    results = os.dup(1)  # the result channel; fds 0 and 1 themselves go to /dev/null
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    mem_markers = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")
    crash_signals = {signal.SIGSEGV, signal.SIGABRT, signal.SIGFPE, signal.SIGBUS, signal.SIGILL, signal.SIGTRAP,
                     signal.SIGSYS, signal.SIGXFSZ}
    limits: dict = {}
    env: dict = {}
    cap_out = cap_err = 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/<pid>/mem, /proc/<pid>/fd for the tests
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back to us, to be reaped
    except Exception:
        pass
    if pidns:
        n = nproc + 4  # bubblewrap's init, this supervisor, the test's first process, slack
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))

    def read_exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(jobs, n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def emit(obj: dict) -> None:
        data = (repr(obj) + "\n").encode("utf-8", "replace")
        while data:
            data = data[os.write(results, data):]

    def others() -> list:
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]

    def reap(statuses: dict) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            statuses[pid] = (status, usage)

    def kill_all(child: int, statuses: dict) -> None:
        """Kill and reap every process but us (and bubblewrap's init); outside a PID namespace, the child's group."""
        deadline = time.monotonic() + 3.0
        while True:
            if pidns:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(-1, signal.SIGKILL)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child, signal.SIGKILL)
            reap(statuses)
            left = others() if pidns else ([child] if child not in statuses else [])
            if not left or time.monotonic() > deadline:
                return
            time.sleep(0.001)

    def wipe() -> None:
        for top in [work] + (["/dev/shm"] if pidns else []):
            try:
                os.chmod(top, 0o755 if pidns else 0o700)
                names = os.listdir(top)
            except OSError:
                continue
            for name in names:
                remove(os.path.join(top, name))

    def remove(path: str) -> None:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
                for name in os.listdir(path):
                    remove(os.path.join(path, name))
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:
            pass

    def input_fd(data: bytes) -> int:
        try:
            fd = os.memfd_create("stdin", 0)
        except (AttributeError, OSError):
            path = os.path.join(work, ".stdin")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.unlink(path)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def set_limits(timeout_s: float, memory_mb: int) -> None:
        cpu = int(timeout_s) + 1
        for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                           (resource.RLIMIT_AS, (memory_mb << 20,) * 2),
                           (resource.RLIMIT_FSIZE, (limits["max_file_mb"] << 20,) * 2),
                           (resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2),
                           (resource.RLIMIT_CORE, (0, 0))):
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(res, value)

    def child(argv, code, stdin_fd: int, out_w: int, err_w: int, tok_w, token: str, timeout_s: float,
              memory_mb: int) -> None:
        """The test process: never returns (os._exit)."""
        status = 127
        try:
            os.setpgid(0, 0)
            if tok_w is not None:
                os.dup2(tok_w, 3)
            os.dup2(stdin_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.closerange(4 if tok_w is not None else 3, 1 << 16)
            os.chdir(work)
            set_limits(timeout_s, memory_mb)
            if argv is not None:
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                os.execvpe(argv[0], argv, env)
            status = run_python(code, token)
        except BaseException:
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
        finally:
            os._exit(status & 0xFF)

    def run_python(code, token: str) -> int:
        """Run compiled code as `python main.py` would, in this (forked) process; its exit status."""
        path = os.path.join(work, "main.py")
        module = types.ModuleType("__main__")
        module.__dict__.update({"__file__": path, "__builtins__": builtins, "__cached__": None})
        sys.modules["__main__"] = module
        sys.argv = [path]
        sys.path.insert(0, work)
        # New streams over the test's fds 0-2, as a fresh interpreter has (they live as long as the process).
        sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
        sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="surrogateescape",  # noqa: SIM115
                                           closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                                           closefd=False, buffering=1)
        write, completed, status = os.write, False, 0
        try:
            exec(code, module.__dict__)
            completed = True
        except SystemExit as exc:
            if exc.code is None:
                status = 0
            elif isinstance(exc.code, int):
                status = exc.code
            else:
                print(exc.code, file=sys.stderr)
                status = 1
        except BaseException:
            kind, value, tb = sys.exc_info()
            tb = tb.tb_next if tb is not None else tb  # start at the program's frame, as `python main.py` does
            if value is not None:
                value.__traceback__ = tb
            sys.excepthook(kind, value, tb)
            status = 1
        for finish in ("threading", "atexit"):
            try:
                if finish == "threading" and "threading" in sys.modules:
                    sys.modules["threading"]._shutdown()
                elif finish == "atexit":
                    import atexit

                    atexit._run_exitfuncs()
            except BaseException:
                pass
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        if completed and token:
            with contextlib.suppress(OSError):
                write(3, token.encode())
        return status

    def run_one(argv, code, data: bytes, timeout_s: float, memory_mb: int, check: bool, clean: bool = True) -> dict:
        token = os.urandom(16).hex() if check else ""
        stdin_fd = input_fd(data)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        tok_r, tok_w = os.pipe() if check else (None, None)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            child(argv, code, stdin_fd, out_w, err_w, tok_w, token, timeout_s, memory_mb)
        for fd in (stdin_fd, out_w, err_w, tok_w):
            if fd is not None:
                os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        bufs = {out_r: bytearray(), err_r: bytearray()}
        if tok_r is not None:
            bufs[tok_r] = bytearray()
        sizes = dict.fromkeys(bufs, 0)
        caps = {out_r: cap_out, err_r: cap_err, tok_r: 64}
        statuses: dict = {}
        reason = None
        deadline = start + timeout_s
        open_fds = list(bufs)

        def pump(fd: int) -> None:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.remove(fd)
                return
            sizes[fd] += len(chunk)
            room = caps[fd] - len(bufs[fd])
            if room > 0:
                bufs[fd] += chunk[:room]

        while True:
            if pidfd is None:
                reap(statuses)
            if pid in statuses:
                break
            now = time.monotonic()
            if now >= deadline:
                reason = "timeout"
                break
            watch = open_fds + ([pidfd] if pidfd is not None else [])
            wait = deadline - now if pidfd is not None else min(deadline - now, 0.005)
            ready = select.select(watch, [], [], wait)[0] if watch else (time.sleep(wait) or [])
            for fd in ready:
                if fd == pidfd:
                    reap(statuses)
                else:
                    pump(fd)
            if sizes[out_r] > cap_out or sizes[err_r] > cap_out:
                reason = "output"
                break
        wall = time.monotonic() - start
        kill_all(pid, statuses)
        end = time.monotonic() + 0.2
        while open_fds and time.monotonic() < end:
            for fd in select.select(open_fds, [], [], 0.05)[0]:
                pump(fd)
        for fd in list(bufs) + ([pidfd] if pidfd is not None else []):
            os.close(fd)
        if clean:
            wipe()
        stdout = bufs[out_r].decode("utf-8", "replace")
        stderr = bufs[err_r].decode("utf-8", "replace")
        truncated = sizes[out_r] > cap_out or sizes[err_r] > cap_err
        status_word, usage = statuses.get(pid, (None, None))
        exit_code = None
        cpu = (usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
        if reason == "timeout":
            status = "timeout"
            stderr += f"\n[sandbox] killed: wall time limit of {timeout_s:g} s"
        elif reason == "output":
            status = "killed"
            stderr += f"\n[sandbox] killed: output limit of {cap_out} bytes"
        elif status_word is None:
            status = "killed"
        elif os.WIFEXITED(status_word):
            exit_code = os.WEXITSTATUS(status_word)
            if exit_code == 0:
                status = "ok"
            elif any(m in stderr for m in mem_markers):
                status = "memory_limit"
            else:
                status = "runtime_error"
        else:
            sig = os.WTERMSIG(status_word)
            exit_code = -sig
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= int(timeout_s) + 0.9):
                status = "timeout"
                stderr += f"\n[sandbox] killed: CPU time limit of {int(timeout_s) + 1} s"
            elif any(m in stderr for m in mem_markers):
                status = "memory_limit"
            elif sig in crash_signals:
                status = "runtime_error"
                stderr += f"\n[sandbox] terminated by signal {sig} ({signal.Signals(sig).name})"
            else:
                status = "killed"
                stderr += f"\n[sandbox] killed by signal {sig} ({signal.Signals(sig).name})"
        passed = None
        if check:
            passed = status == "ok" and bytes(bufs[tok_r]) == token.encode()
        return {"status": status, "stdout": stdout, "stderr": stderr.lstrip("\n"), "exit_code": exit_code,
                "wall_s": round(wall, 6), "passed": passed, "truncated": truncated}

    def handle(job: dict) -> None:
        """One call: compile once, then every test; a line per step."""
        nonlocal limits, env, cap_out, cap_err
        limits, env = job["limits"], dict(job["env"])
        cap_out, cap_err = limits["max_output_bytes"], limits["max_stderr_bytes"]
        source = job["source"]
        compiled = None
        program = None
        start = time.monotonic()
        if job["language"] == "python":
            try:
                compiled = compile(source, os.path.join(work, "main.py"), "exec", dont_inherit=True)
            except BaseException as exc:
                import traceback

                text = "".join(traceback.format_exception_only(type(exc), exc))
                emit({"compile": {"status": "compile_error", "stdout": "", "stderr": text[-cap_err:], "exit_code": 1,
                                  "wall_s": round(time.monotonic() - start, 6), "passed": None, "truncated": False}})
                return
        else:
            with open(os.path.join(work, job["source_name"]), "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(source)
            result = run_one(job["compile"], None, b"", limits["compile_timeout_s"], limits["compile_memory_mb"], False,
                             clean=False)
            if result["status"] == "ok":
                try:
                    with open(os.path.join(work, "prog"), "rb") as f:
                        program = f.read()
                except OSError as exc:
                    result.update(status="compile_error", stderr=result["stderr"] + f"\nno binary: {exc}")
            else:  # failed, or the compiler was stopped (time, memory): the program does not compile in bounds
                result["status"] = "compile_error"
            emit({"compile": result})
            wipe()
            if program is None:
                return
        budget = job["total_timeout_s"]
        for index, data in enumerate(job["tests"]):
            if budget is not None and time.monotonic() - start > budget:
                note = f"[sandbox] not run: the time for all tests ({budget:g} s) is spent"
                emit({"test": index, "result": {"status": "timeout", "stdout": "", "stderr": note, "exit_code": None,
                                                "wall_s": 0.0, "passed": None, "truncated": False}})
                continue
            argv = None
            if program is not None:
                path = os.path.join(work, "prog")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
                view = memoryview(program)
                while view:
                    view = view[os.write(fd, view):]
                os.close(fd)
                argv = [path]
            else:
                with open(os.path.join(work, "main.py"), "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(source)
            raw = data.encode("utf-8", "surrogateescape")
            result = run_one(argv, compiled, raw, limits["timeout_s"], limits["memory_mb"], job["check"])
            emit({"test": index, "result": result})



    os.chdir(work)
    wipe()
    while True:
        header = read_exact(8)
        if len(header) < 8:
            return
        job = marshal.loads(read_exact(int.from_bytes(header, "little")))
        if pidns and others():
            os._exit(3)  # a process outlived its test: never run the next job into a half-dead namespace
        handle(job)
        wipe()
        if os.listdir(work) or (pidns and os.listdir("/dev/shm")):
            os._exit(3)  # something could not be removed: end the session rather than leak it to the next job
        emit({"done": True})


@functools.lru_cache(maxsize=1)
def _supervisor_source() -> str:
    return "from __future__ import annotations\n" + inspect.getsource(_supervisor) + "\n_supervisor()\n"


# ---------------------------------------------------------------- uids for concurrent sandboxes


class _UidSlots:
    """One unprivileged uid per live sandbox when this process is root (the kernel exempts uid 0 from RLIMIT_NPROC)."""

    def __init__(self, base: int):
        self.base = base
        self._free: list[int] = []
        self._next = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[int]:
        with self._lock:
            if self._free:
                index = self._free.pop()
            else:
                index, self._next = self._next, self._next + 1
        try:
            yield self.base + index
        finally:
            with self._lock:
                self._free.append(index)


_UIDS = _UidSlots(SANDBOX_UID_BASE)


# ---------------------------------------------------------------- the sandbox


def _sandbox_python(python: str | None) -> tuple[str, list[str]]:
    """The interpreter run inside (the system's python3 by default) and the directories to bind for it."""
    if python is None:
        for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
            if os.access(candidate, os.X_OK):
                return candidate, []
        python = sys.executable
    real = os.path.realpath(python)
    if any(real.startswith(d + "/") for d in _SYSTEM_DIRS):
        return python, []
    prefix = os.path.realpath(sys.base_prefix) if real.startswith(os.path.realpath(sys.base_prefix) + "/") \
        else os.path.dirname(os.path.dirname(real))
    return real, [prefix]


@functools.lru_cache(maxsize=4)
def _bwrap_features(bwrap: str) -> frozenset[str]:
    try:
        text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, env={}).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(opt for opt in ("--size", "--disable-userns", "--remount-ro", "--info-fd", "--seccomp")
                     if opt in text)


class Sandbox:
    """Runs programs in bubblewrap (or, only if allowed and bubblewrap cannot work, without isolation).

    `check()` probes once that a sandbox starts here; without one it raises SandboxUnavailable naming
    the fix, unless `allow_unsandboxed=True`, which logs a loud warning and runs programs as plain
    processes (limits still applied, no isolation). `python` is the interpreter used inside
    (default: the system's `/usr/bin/python3`); `bwrap` the bubblewrap binary (default: $POSTTRAIN_BWRAP,
    else `bwrap` on PATH).
    """

    def __init__(self, limits: Limits | None = None, *, allow_unsandboxed: bool = False, python: str | None = None,
                 bwrap: str | None = None, seccomp: bool = True, reuse: bool = True):
        self.limits = (limits or Limits()).check()
        self.allow_unsandboxed = bool(allow_unsandboxed)
        self.python, self._python_binds = _sandbox_python(python)
        self.bwrap = bwrap or os.environ.get("POSTTRAIN_BWRAP") or shutil.which("bwrap") \
            or shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")
        self.seccomp = bool(seccomp)
        self.isolated: bool | None = None  # None until check()
        self.unavailable_reason = ""
        self.reuse = bool(reuse)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[_Session] = []
        self._sessions_lock = threading.Lock()
        self._root = os.geteuid() == 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_local", "_sessions", "_sessions_lock"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions = []
        self._sessions_lock = threading.Lock()

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
        """Run one program on one input; see `run` at module level."""
        compile_result, results = self.run_tests(code, language, [stdin], **limits)
        return compile_result if compile_result is not None and not results else results[0]

    def run_tests(self, code: str, language: str, inputs: Sequence[str], check: bool = False,
                  **limits: Any) -> tuple[RunResult | None, list[RunResult]]:
        """(compile result or None, one result per input): compiled once, each input in a fresh process.

        With `check=True` a Python program `passed` only if it ran to its end: no exception, no
        `sys.exit`/`os._exit`, whatever the exit code. On a compile error there are no test results.
        """
        self.check()
        language = normalize_language(language)
        if check and language != "python":
            raise DataError("check-style tests are Python only")
        bounds = replace(self.limits, **limits).check() if limits else self.limits
        return self._execute(language, code, list(inputs), check=check, limits=bounds, isolated=bool(self.isolated))

    def run_check(self, code: str, test: str, entry_point: str, **limits: Any) -> RunResult:
        """HumanEval style: `code`, then `test` (defining `check(candidate)`), then `check(entry_point)`.

        `passed` is True only if check() returned; the exit code does not decide it.
        """
        if not isinstance(entry_point, str) or not entry_point.isidentifier():
            raise DataError(f"entry_point must be a Python identifier, got {entry_point!r}")
        program = f"{code}\n\n{test}\n\ncheck({entry_point})\n"
        compile_result, results = self.run_tests(program, "python", [""], check=True, **limits)
        if not results:
            assert compile_result is not None
            compile_result.passed = False
            return compile_result
        return results[0]

    def _bwrap_command(self, uid: int | None, tmp_mb: int) -> tuple[list[str], dict[str, int], dict[str, Any]]:
        """bubblewrap's argv (up to the supervisor's own arguments), the fds it must inherit, Popen options."""
        features = _bwrap_features(self.bwrap)
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                "--uid", str(_INNER_UID), "--gid", str(_INNER_UID), "--cap-drop", "ALL"]
        if "--disable-userns" in features:
            args.append("--disable-userns")
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        for f in _ETC_FILES:
            args += ["--ro-bind-try", f, f]
        for d in self._python_binds:
            args += ["--ro-bind", d, d]
        size = ["--size", str(tmp_mb << 20)] if "--size" in features else []
        shm = ["--size", str(min(tmp_mb, 16) << 20)] if "--size" in features else []
        args += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/tmp", *shm, "--tmpfs", "/dev/shm"]
        if "--remount-ro" in features:
            args += ["--remount-ro", "/dev", "--remount-ro", "/"]
        args += ["--chdir", "/tmp", "--clearenv"]
        for key, value in _ENV.items():
            args += ["--setenv", key, value]
        fds: dict[str, int] = {}
        if "--info-fd" in features:
            info_r, info_w = os.pipe()
            fds["info_r"], fds["info_w"] = info_r, info_w
            args += ["--info-fd", str(info_w)]
        program = seccomp_filter() if self.seccomp and "--seccomp" in features else None
        if program is not None:
            sec_r, sec_w = os.pipe()
            os.write(sec_w, program)
            os.close(sec_w)
            fds["seccomp"] = sec_r
            args += ["--seccomp", str(sec_r)]
        args += ["--", self.python, "-I", "-X", "utf8", "-c", _supervisor_source()]
        popen: dict[str, Any] = {"env": {}}
        if uid is not None:
            popen.update(user=uid, group=uid, extra_groups=[])
        return args, fds, popen

    # ------------------------------------------------------------ launching

    def _execute(self, language: str, code: str, inputs: list[str], *, check: bool, limits: Limits, isolated: bool,
                 host_timeout_s: float | None = None) -> tuple[RunResult | None, list[RunResult]]:
        job: dict[str, Any] = {"language": language, "source": code, "tests": inputs, "check": check,
                               "limits": asdict(limits), "env": _ENV, "total_timeout_s": limits.total_timeout_s}
        if language in COMPILERS:
            job["source_name"], job["compile"] = COMPILERS[language][0], list(COMPILERS[language][1])
        per_test = limits.timeout_s + 0.5
        budget = limits.total_timeout_s if limits.total_timeout_s is not None else per_test * max(1, len(inputs))
        if host_timeout_s is None:
            host_timeout_s = 5.0 + budget + (limits.compile_timeout_s if language in COMPILERS else 0.0) \
                + 0.5 * len(inputs)
        payload = marshal.dumps(job, 4)  # format 4: read by every Python >= 3.4
        key = (isolated, limits.tmp_mb, limits.max_processes)
        for attempt in range(2):
            session, fresh = self._session(key)
            records, end, detail = session.request(payload, host_timeout_s)
            if end != "done" or not self.reuse:
                self._discard(key, session)
            # A reused session found dead before it answered anything (e.g. its thread's pool was shut down):
            # start a fresh one and run the job there, once.
            if end == "died" and not records and not fresh and attempt == 0:
                continue
            return self._results(records, len(inputs), end, detail, host_timeout_s)
        raise AssertionError("unreachable")

    def _session(self, key: tuple) -> tuple[_Session, bool]:
        """This thread's live session for `key` (started if needed), and whether it was just started.

        Sessions are per thread: bubblewrap's --die-with-parent follows the thread that started it.
        """
        sessions = getattr(self._local, "sessions", None)
        if sessions is None or self._local.pid != os.getpid():  # none yet, or inherited through fork
            sessions = self._local.sessions = {}
            self._local.pid = os.getpid()
        session = sessions.get(key)
        if session is not None and session.alive():
            return session, False
        if session is not None:
            self._discard(key, session)
        session = _Session(self, isolated=key[0], tmp_mb=key[1], max_processes=key[2])
        sessions[key] = session
        with self._sessions_lock:
            dead = [s for s in self._sessions if not s.alive()]
            self._sessions = [s for s in self._sessions if s.alive()] + [session]
        for old in dead:  # e.g. the sandboxes of threads that ended: reap them, free their uids
            old.close()
        return session, True

    def _discard(self, key: tuple, session: _Session) -> None:
        session.close()
        sessions = getattr(self._local, "sessions", {})
        if sessions.get(key) is session:
            del sessions[key]

    def close(self) -> None:
        """End every idle sandbox of this object (all threads'); runs in progress must be finished."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def _results(self, records: list[dict], n: int, end: str, detail: str,
                 host_timeout_s: float) -> tuple[RunResult | None, list[RunResult]]:
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


class _Session:
    """One running sandbox (bubblewrap + the supervisor) that runs jobs one after another.

    Between jobs nothing of a program is left: the supervisor kills and reaps every process and
    wipes /tmp and /dev/shm after each test, and refuses to go on (ends) if it cannot. A session
    that timed out, died, or was killed by its program is torn down and replaced.
    """

    def __init__(self, sandbox: Sandbox, isolated: bool, tmp_mb: int, max_processes: int):
        self.owner = os.getpid()
        self.isolated = isolated
        self._stack = contextlib.ExitStack()
        self.info_r: int | None = None
        self.child: int | None = None  # host PID of the sandbox's init (its PID namespace dies with it)
        self._buffer = b""
        self._err = b""
        try:
            if isolated:
                uid = self._stack.enter_context(_UIDS.slot()) if sandbox._root else None
                argv, fds, popen = sandbox._bwrap_command(uid, tmp_mb)
                workdir = "/tmp"
            else:
                workdir = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="posttrain-unsandboxed-"))
                argv, fds, popen = [sandbox.python, "-I", "-X", "utf8", "-c", _supervisor_source()], {}, {}
                popen["env"] = {**_ENV, "HOME": workdir, "TMPDIR": workdir}
            argv += [workdir, "1" if isolated else "0", str(max_processes)]
            self.info_r = fds.pop("info_r", None)
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, bufsize=0, start_new_session=True,
                                             close_fds=True, cwd="/", pass_fds=tuple(fds.values()), **popen)
            finally:
                for fd in fds.values():
                    _close(fd)
        except BaseException:
            if self.info_r is not None:
                _close(self.info_r)
            self._stack.close()
            raise

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def request(self, payload: bytes, timeout_s: float) -> tuple[list[dict], str, str]:
        """Send one job; (records, "done" | "timeout" | "died", detail) once it is answered or bounded."""
        deadline = time.monotonic() + timeout_s
        records: list[dict] = []
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(len(payload).to_bytes(8, "little") + payload)
        except (BrokenPipeError, OSError):
            return records, "died", self._detail()
        out, err = self.proc.stdout, self.proc.stderr
        assert out is not None and err is not None
        streams = {out.fileno(): "out", err.fileno(): "err"}
        poller = select.poll()  # not select(): a training process may hold fds past 1024
        for fd in streams:
            poller.register(fd, select.POLLIN)
        while streams:
            left = deadline - time.monotonic()
            if left <= 0:
                return records, "timeout", ""
            for fd, _ in poller.poll(left * 1000):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    poller.unregister(fd)
                    del streams[fd]
                elif streams[fd] == "err":
                    self._err = (self._err + chunk)[-4000:]
                else:
                    self._buffer += chunk
                    *lines, self._buffer = self._buffer.split(b"\n")
                    for line in lines:
                        record = _literal(line)
                        if record is None:
                            continue
                        if record.get("done"):
                            return records, "done", ""
                        records.append(record)
            if out.fileno() not in streams:  # the supervisor is gone
                break
        return records, "died", self._detail()

    def _detail(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1)
        err = self._err.decode("utf-8", "replace").strip()[-1000:]
        return f"exit status {self.proc.returncode}" + (f": {err}" if err else "")

    def close(self) -> None:
        """End the session: EOF to an idle supervisor; kill a busy, stuck or dead one's namespace. Idempotent."""
        if self.owner != os.getpid():
            return  # a forked copy: the session is the parent's
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self._kill()
        self._kill()  # also makes sure the namespace is gone when bubblewrap exited first
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        if self.info_r is not None:
            _close(self.info_r)
            self.info_r = None
        self._stack.close()

    def _kill(self) -> None:
        """Kill the sandbox's init (the kernel then kills everything in its PID namespace), then bubblewrap."""
        if self.child is None and self.info_r is not None:
            self.child = _child_pid(self.info_r)
        if self.child is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.child, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        if self.child is not None:  # bubblewrap reaps its init only once the namespace is empty; make sure
            end = time.monotonic() + 5.0
            while _is_process(self.child) and time.monotonic() < end:
                time.sleep(0.01)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _literal(line: bytes) -> dict | None:
    """One record of the supervisor (the repr() of a dict of literals), or None."""
    try:
        record = ast.literal_eval(line.decode("utf-8", "replace"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _is_process(pid: int) -> bool:
    """Whether `pid` still exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _child_pid(info_r: int) -> int | None:
    """The PID (on the host) of the sandbox's init, from bubblewrap's --info-fd JSON."""
    os.set_blocking(info_r, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(info_r, 4096):
            data += chunk
    try:
        return int(json.loads(data.decode())["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- module-level verbs

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
    """Run `code` (python | c | cpp) on `stdin` in a sandbox; compile first for C/C++.

    Returns a RunResult: `status` in {ok, runtime_error, compile_error, timeout, memory_limit, killed},
    capped `stdout`/`stderr`, `exit_code` (negative: killed by that signal), `wall_s`. Other limits
    (`compile_timeout_s`, `max_output_bytes`, `max_processes`, `tmp_mb`, …) as in `Limits`.
    Raises SandboxUnavailable if no sandbox can start here, unless `allow_unsandboxed=True`.
    """
    return default_sandbox(allow_unsandboxed).run(code, language, stdin, timeout_s=timeout_s, memory_mb=memory_mb,
                                                  **limits)


__all__ = ["LANGUAGES", "STATUSES", "Limits", "RunResult", "Sandbox", "SandboxUnavailable", "default_sandbox",
           "normalize_language", "run", "seccomp_filter"]
