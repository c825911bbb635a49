"""The one process of ours inside the sandbox: compiles a program once, runs each test in a fresh child.

The host ships this file's text to the system's Python (`python -I -c <text>`, see `bwrap.py`): it may
import only the standard library, must run on Python >= 3.8, and imports little (no json, traceback
or typing), as every new sandbox pays its start-up. Jobs come in on fd 0, records go out on fd 1, and
both then point at /dev/null: a test never holds the result channel, nor (this process being
non-dumpable) reaches it through /proc. After each test every other process is killed and reaped and
/tmp and /dev/shm are wiped; if that fails we exit rather than run the next job into what is left.
"""

from __future__ import annotations

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

#: A job: this many bytes of little-endian length, then a marshal'ed dict (see protocol.encode_job).
HEADER_BYTES = 8
#: marshal format 4 is read by every Python >= 3.4, whichever Python the host runs.
MARSHAL_VERSION = 4
#: stderr text that means "out of memory" in any language (a job may add its language's own).
MEMORY_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")
#: Signals by which a program crashes on its own (runtime_error), rather than being killed.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGFPE, signal.SIGBUS, signal.SIGILL,
                           signal.SIGTRAP, signal.SIGSYS, signal.SIGXFSZ})
#: The fd on which a check-style Python test gets the token it writes once it has run to its end.
TOKEN_FD = 3
EXIT_UNCLEAN = 3  # our exit status when a test left something we cannot remove
#: The fds on which a harness test talks to its candidate's process (request, reply).
CANDIDATE_FDS = (5, 6)


# ---------------------------------------------------------------- the wire format (the host's half: protocol.py)


def read_exact(fd: int, n: int) -> bytes:
    """Up to `n` bytes from `fd`; fewer only at end of input."""
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_job(fd: int) -> dict | None:
    """The next job, or None once the host closed the channel (time to exit)."""
    header = read_exact(fd, HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        return None
    return marshal.loads(read_exact(fd, int.from_bytes(header, "little")))


def encode_record(record: dict) -> bytes:
    """One record as a line: the repr() of a dict of literals, read back with ast.literal_eval."""
    return (repr(record) + "\n").encode("utf-8", "replace")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def result(status: str, stdout: str = "", stderr: str = "", exit_code: int | None = None, wall_s: float = 0.0,
           passed: bool | None = None, truncated: bool = False) -> dict:
    """A test's or compiler's outcome: the fields of the host's RunResult."""
    return {"status": status, "stdout": stdout, "stderr": stderr, "exit_code": exit_code, "wall_s": wall_s,
            "passed": passed, "truncated": truncated}


# ---------------------------------------------------------------- decisions (pure)


class Capped:
    """The first `cap` bytes of a stream, and how many came in all: a program may print forever."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.seen = 0

    def add(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.seen > self.cap

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def classify(wait_status: int | None, reason: str | None, stderr: str, *, timeout_s: float, cpu_s: float,
             cap_out: int, memory_markers: tuple = MEMORY_MARKERS) -> tuple[str, int | None, str]:
    """(status, exit code, stderr with our note) of a finished test.

    `reason` is why we stopped it ("timeout" | "output" | None), `wait_status` what wait4 said
    (None: never reaped). A negative exit code is the killing signal. A process killed by SIGKILL
    after using its CPU allowance is a timeout (the hard RLIMIT_CPU), not a kill by us.
    """
    cpu_limit = int(timeout_s) + 1
    if reason == "timeout":
        return "timeout", None, stderr + f"\n[sandbox] killed: wall time limit of {timeout_s:g} s"
    if reason == "output":
        return "killed", None, stderr + f"\n[sandbox] killed: output limit of {cap_out} bytes"
    if wait_status is None:
        return "killed", None, stderr
    out_of_memory = any(m in stderr for m in memory_markers)
    if os.WIFEXITED(wait_status):
        code = os.WEXITSTATUS(wait_status)
        return ("ok" if code == 0 else "memory_limit" if out_of_memory else "runtime_error"), code, stderr
    sig = os.WTERMSIG(wait_status)
    name = signal.Signals(sig).name
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= int(timeout_s) + 0.9):
        return "timeout", -sig, stderr + f"\n[sandbox] killed: CPU time limit of {cpu_limit} s"
    if out_of_memory:
        return "memory_limit", -sig, stderr
    if sig in CRASH_SIGNALS:
        return "runtime_error", -sig, stderr + f"\n[sandbox] terminated by signal {sig} ({name})"
    return "killed", -sig, stderr + f"\n[sandbox] killed by signal {sig} ({name})"


def harness_passed(status: str, received: bytes, token: str) -> bool:
    """A check-style test passed only if it exited 0 and wrote its token, which happens after the program ran to
    its end: an exception, `sys.exit(0)`, `os._exit(0)` or a swapped `sys.excepthook` never writes it."""
    return status == "ok" and bool(token) and received == token.encode()


def exit_status(code: object) -> tuple[int, str | None]:
    """What `python main.py` exits with after `SystemExit(code)`, and what it prints on stderr first."""
    if code is None:
        return 0, None
    if isinstance(code, int):
        return code, None
    return 1, str(code)


def rlimits(timeout_s: float, memory_mb: int, max_file_mb: int, max_open_files: int) -> list[tuple[int, tuple]]:
    """The resource limits of one test process: CPU time (soft, then hard a second later), memory, files, no core."""
    cpu = int(timeout_s) + 1
    return [(resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (memory_mb << 20,) * 2),
            (resource.RLIMIT_FSIZE, (max_file_mb << 20,) * 2), (resource.RLIMIT_NOFILE, (max_open_files,) * 2),
            (resource.RLIMIT_CORE, (0, 0))]


# ---------------------------------------------------------------- the test process (after fork)


def run_python(work: str, code: types.CodeType, token: str, extra: dict | None = None) -> int:
    """Run compiled code as `python main.py` would, in this (forked) process; its exit status.

    `extra`: more globals of the module (the harness gets the candidate's code object as CANDIDATE).
    """
    path = os.path.join(work, "main.py")
    module = types.ModuleType("__main__")
    module.__dict__.update({"__file__": path, "__builtins__": builtins, "__cached__": None})
    module.__dict__.update(extra or {})
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
        status, message = exit_status(exc.code)
        if message is not None:
            print(message, file=sys.stderr)
    except BaseException:
        kind, value, tb = sys.exc_info()
        tb = tb.tb_next if tb is not None else tb  # start at the program's frame, as `python main.py` does
        if value is not None:
            value.__traceback__ = tb
        sys.excepthook(kind, value, tb)
        status = 1
    with contextlib.suppress(BaseException):
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
    with contextlib.suppress(BaseException):
        import atexit

        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    if completed and token:
        with contextlib.suppress(OSError):
            write(TOKEN_FD, token.encode())
    return status


def input_fd(work: str, data: bytes) -> int:
    """A readable fd holding `data` from its start: the test's stdin (never a pipe a test could keep open)."""
    try:
        fd = os.memfd_create("stdin", 0)
    except (AttributeError, OSError):
        path = os.path.join(work, ".stdin")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.unlink(path)
    write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# ---------------------------------------------------------------- the supervisor


class Supervisor:
    """Runs jobs one after another in `work` (the sandbox's /tmp); `pidns`: we are PID 2 of our own namespace."""

    def __init__(self, work: str, pidns: bool, jobs: int, results: int) -> None:
        self.work, self.pidns, self.jobs, self.results = work, pidns, jobs, results
        self.me = os.getpid()
        self.limits: dict = {}
        self.env: dict = {}
        self.markers: tuple = MEMORY_MARKERS
        self.harness: tuple = (None, None, None)  # (source, code, namespace) of the last harness compiled
        self.candidate: tuple | None = None  # (pid, request fd, reply fd) of a harness job's candidate process

    def emit(self, record: dict) -> None:
        write_all(self.results, encode_record(record))

    def serve(self) -> None:
        """Answer jobs until the host closes the channel; exit at once if a job leaves anything behind."""
        os.chdir(self.work)
        self.wipe()
        while True:
            job = read_job(self.jobs)
            if job is None:
                return
            if self.pidns and self.others():
                os._exit(EXIT_UNCLEAN)  # a process outlived its test: never run a job into a half-dead namespace
            self.handle(job)
            self.wipe()
            if os.listdir(self.work) or (self.pidns and os.listdir("/dev/shm")):
                os._exit(EXIT_UNCLEAN)  # something could not be removed: end rather than leak it to the next job
            self.emit({"done": True})

    # ------------------------------------------------------------ cleaning up

    def others(self) -> list[int]:
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, self.me)]

    def reap(self, statuses: dict) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            statuses[pid] = (status, usage)

    def kill_all(self, child: int, statuses: dict, keep: int | None = None) -> None:
        """Kill and reap every process but us and bubblewrap's init (and `keep`, a harness job's candidate process,
        whose own children go); outside a PID namespace, the child's group."""
        deadline = time.monotonic() + 3.0
        while True:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if self.pidns and keep is None:
                    os.kill(-1, signal.SIGKILL)
                elif not self.pidns:
                    os.killpg(child, signal.SIGKILL)
            for pid in self.others() if self.pidns and keep is not None else ():
                if pid != keep:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            self.reap(statuses)
            if not self.pidns:
                left = [child] if child not in statuses else []
            else:
                left = [p for p in self.others() if p != keep and not (keep and zombie(p))]
            if not left or time.monotonic() > deadline:
                return
            time.sleep(0.001)

    def wipe(self) -> None:
        for top in [self.work] + (["/dev/shm"] if self.pidns else []):
            try:
                os.chmod(top, 0o755 if self.pidns else 0o700)
                names = os.listdir(top)
            except OSError:
                continue
            for name in names:
                remove(os.path.join(top, name))

    # ------------------------------------------------------------ one job

    def handle(self, job: dict) -> None:
        """Compile once (a record), then run every test (a record each)."""
        self.limits, self.env = job["limits"], dict(job["env"])
        self.markers = MEMORY_MARKERS + tuple(job.get("memory_markers", ()))
        source, start = job["source"], time.monotonic()
        compiled = harness = None
        artifacts: dict[str, bytes] = {}
        if job["run"] is None:  # Python, run in a fork of this process: compile here, once
            try:
                compiled = compile(source, os.path.join(self.work, job["source_name"]), "exec", dont_inherit=True)
                if job.get("harness"):  # the tests' process runs the harness; it starts the candidate's (harness.py)
                    if self.harness[0] != job["harness"]:  # the same text every job: compiled once per sandbox
                        code = compile(job["harness"], "<harness>", "exec", dont_inherit=True)
                        namespace: dict = {"__name__": "harness"}
                        exec(code, namespace)  # defines what it needs; runs no test (that is its __main__)
                        self.harness = (job["harness"], code, namespace)
                    harness = self.harness[1]
            except BaseException as exc:
                import traceback

                text = "".join(traceback.format_exception_only(type(exc), exc))
                self.emit({"compile": result("compile_error", stderr=text[-self.limits["max_stderr_bytes"]:],
                                             exit_code=1, wall_s=round(time.monotonic() - start, 6))})
                return
        elif job["compile"]:
            write_file(os.path.join(self.work, job["source_name"]), source.encode("utf-8", "surrogateescape"))
            compiler = [arg.replace("{dir}", self.work) for arg in job["compile"]]
            outcome = self.run_one(compiler, None, b"", self.limits["compile_timeout_s"],
                                   self.limits["compile_memory_mb"], check=False, clean=False)
            if outcome["status"] == "ok":
                try:
                    artifacts = collect(self.work, job["keep"])
                except OSError as exc:
                    outcome.update(status="compile_error", stderr=outcome["stderr"] + f"\nno binary: {exc}")
            else:  # failed, or stopped (time, memory): the program does not compile within bounds
                outcome["status"] = "compile_error"
            self.emit({"compile": outcome})
            self.wipe()
            if outcome["status"] != "ok":
                return
        if not artifacts:  # interpreted: each test gets the source
            artifacts = {job["source_name"]: source.encode("utf-8", "surrogateescape")}
        budget = job["total_timeout_s"]
        for index, data in enumerate(job["tests"]):
            if budget is not None and time.monotonic() - start > budget:
                note = f"[sandbox] not run: the time for all tests ({budget:g} s) is spent"
                self.emit({"test": index, "result": result("timeout", stderr=note)})
                continue
            for name, content in artifacts.items():  # afresh: the last test may have changed them
                write_file(os.path.join(self.work, name), content, 0o755 if job["compile"] else 0o666)
            argv = None if job["run"] is None else [arg.replace("{dir}", self.work) for arg in job["run"]]
            memory = self.limits["memory_mb"] + job.get("address_space_mb", 0)  # a JVM reserves more than it uses
            candidate = self.start_candidate(compiled, job) if harness is not None else None
            outcome = self.run_one(argv, compiled, data.encode("utf-8", "surrogateescape"), self.limits["timeout_s"],
                                   memory, check=job["check"], harness=harness, candidate=candidate)
            if outcome["status"] != "ok":  # stuck, dead or out of step with its tests: the next test gets a new one
                self.end_candidate()
            self.emit({"test": index, "result": outcome})
        self.end_candidate()

    def start_candidate(self, code: types.CodeType, job: dict) -> tuple | None:
        """A harness job's candidate process (harness.start_candidate: a fresh interpreter that loaded the code),
        kept from test to test like the reference harnesses' one process per problem; None if it cannot start."""
        if self.candidate is not None:
            try:
                if os.waitpid(self.candidate[0], os.WNOHANG)[0] == 0:
                    return self.candidate
            except ChildProcessError:
                pass
            self.end_candidate()
        bounds = rlimits(self.limits["timeout_s"], self.limits["memory_mb"], self.limits["max_file_mb"],
                         self.limits["max_open_files"])[1:]  # not CPU time: it serves many tests, each bounded

        def limit() -> None:
            for res, value in bounds:
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(res, value)

        try:
            self.candidate = self.harness[2]["start_candidate"](code, job.get("prelude") or "", self.env, limit)
        except OSError:
            self.candidate = None
        return self.candidate

    def end_candidate(self) -> None:
        if self.candidate is None:
            return
        pid, *fds = self.candidate
        self.candidate = None
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def run_one(self, argv: list[str] | None, code: types.CodeType | None, data: bytes, timeout_s: float,
                memory_mb: int, *, check: bool, clean: bool = True, harness: types.CodeType | None = None,
                candidate: tuple | None = None) -> dict:
        """Run `argv` (or compiled Python) on `data` in a fresh child, bounded; kill all it left; its result."""
        cap_out, cap_err = self.limits["max_output_bytes"], self.limits["max_stderr_bytes"]
        token = os.urandom(16).hex() if check else ""
        stdin_fd = input_fd(self.work, data)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        tok_r, tok_w = os.pipe() if check else (None, None)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self.child(argv, code, stdin_fd, out_w, err_w, tok_w, token, timeout_s, memory_mb, harness,
                       candidate[1:] if candidate is not None else None)
        for fd in (stdin_fd, out_w, err_w, tok_w):
            if fd is not None:
                os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        streams = {out_r: Capped(cap_out), err_r: Capped(cap_err)}
        if tok_r is not None:
            streams[tok_r] = Capped(64)
        open_fds = list(streams)
        statuses: dict = {}
        reason = None
        deadline = start + timeout_s

        def pump(fd: int) -> None:
            chunk = os.read(fd, 65536)
            if chunk:
                streams[fd].add(chunk)
            else:
                open_fds.remove(fd)

        while True:
            if pidfd is None:
                self.reap(statuses)
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
                    self.reap(statuses)
                else:
                    pump(fd)
            if streams[out_r].seen > cap_out or streams[err_r].seen > cap_out:
                reason = "output"
                break
        wall = time.monotonic() - start
        self.kill_all(pid, statuses, keep=candidate[0] if candidate is not None else None)
        end = time.monotonic() + 0.2
        while open_fds and time.monotonic() < end:
            for fd in select.select(open_fds, [], [], 0.05)[0]:
                pump(fd)
        for fd in list(streams) + ([pidfd] if pidfd is not None else []):
            os.close(fd)
        if clean:
            self.wipe()
        wait_status, usage = statuses.get(pid, (None, None))
        cpu = (usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
        status, exit_code, stderr = classify(wait_status, reason, streams[err_r].text(), timeout_s=timeout_s,
                                             cpu_s=cpu, cap_out=cap_out, memory_markers=self.markers)
        passed = harness_passed(status, bytes(streams[tok_r].data), token) if tok_r is not None else None
        return result(status, streams[out_r].text(), stderr.lstrip("\n"), exit_code, round(wall, 6), passed,
                      streams[out_r].truncated or streams[err_r].truncated)

    def child(self, argv: list[str] | None, code: types.CodeType | None, stdin_fd: int, out_w: int, err_w: int,
              tok_w: int | None, token: str, timeout_s: float, memory_mb: int,
              harness: types.CodeType | None = None, candidate: tuple | None = None) -> None:
        """The test process: never returns (os._exit). A harness test gets its candidate's channel as fds 5 and 6."""
        status = 127
        try:
            os.setpgid(0, 0)
            if tok_w is not None:
                os.dup2(tok_w, TOKEN_FD)
            os.dup2(stdin_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            if candidate is not None:
                import fcntl

                high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in candidate]  # out of the way, then in place
                os.dup2(high[0], CANDIDATE_FDS[0])
                os.dup2(high[1], CANDIDATE_FDS[1])
            os.closerange(CANDIDATE_FDS[1] + 1 if candidate is not None else TOKEN_FD + 1 if tok_w is not None
                          else TOKEN_FD, 1 << 16)
            os.chdir(self.work)
            for res, value in rlimits(timeout_s, memory_mb, self.limits["max_file_mb"],
                                      self.limits["max_open_files"]):
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(res, value)
            if argv is not None:
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                os.execvpe(argv[0], argv, self.env)
            if harness is not None:
                status = run_python(self.work, harness, token, {"CANDIDATE_FDS": CANDIDATE_FDS if candidate else None})
            else:
                status = run_python(self.work, code, token)  # type: ignore[arg-type]
        except BaseException:
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
        finally:
            os._exit(status & 0xFF)


# ---------------------------------------------------------------- files


def zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits to be reaped (by a parent of its own: not ours to kill)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def remove(path: str) -> None:
    """Remove a file or a whole tree, whatever its permissions; errors are left for the emptiness check."""
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


def write_file(path: str, data: bytes, mode: int = 0o666) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def collect(work: str, keep: list) -> dict[str, bytes]:
    """The compiler's outputs a test needs: the files of `work` named in `keep` (names or fnmatch patterns).

    A plain name that is missing raises OSError (the compiler made no binary); a pattern must match once.
    """
    found: dict[str, bytes] = {}
    for pattern in keep:
        names = [pattern]
        if any(c in pattern for c in "*?["):
            import fnmatch

            names = sorted(fnmatch.filter(os.listdir(work), pattern))
            if not names:
                raise FileNotFoundError(f"no file matches {pattern!r}")
        for name in names:
            with open(os.path.join(work, name), "rb") as f:
                found[name] = f.read()
    return found


# ---------------------------------------------------------------- start


def main(argv: list[str]) -> None:
    """`WORK PIDNS NPROC`: the writable directory, "1" inside a PID namespace of our own, the tests' process cap."""
    work, pidns, nproc = argv[0], argv[1] == "1", int(argv[2])
    devnull = os.open("/dev/null", os.O_RDWR)
    jobs, results = os.dup(0), os.dup(1)  # the channels; fds 0 and 1 themselves go to /dev/null
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/<pid>/mem, /proc/<pid>/fd for the tests
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back to us, to be reaped
    if pidns:
        n = nproc + 4  # bubblewrap's init, this supervisor, the test's first process, slack
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    Supervisor(work, pidns, jobs, results).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
