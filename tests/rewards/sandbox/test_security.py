"""Hostile programs, in Python and C, against the real bubblewrap sandbox.

Each is contained: nothing written on the host, the listener sees nothing, no secret in any output,
no process left behind (checked after every test by scanning /proc), bounded wall time, this
process alive, and the sandbox still works afterwards.
"""

from __future__ import annotations

import ast
import logging
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rewards.sandbox import (
    SANDBOX_UID_BASE,
    Limits,
    RunResult,
    Sandbox,
    SandboxUnavailable,
    normalize_language,
    seccomp_filter,
)

ROOT = Path(__file__).resolve().parents[3]
#: A number no other process on this machine has in its command line: background programs sleep for it.
MARK = f"{random.randint(10**6, 10**7 - 1)}.25"
LIMITS = Limits(timeout_s=2.0, memory_mb=256, max_processes=16, tmp_mb=16, max_output_bytes=64 << 10,
                compile_timeout_s=60.0)
BOUND_S = 40.0  # wall-time bound for one hostile run (2 s limits; generous for a loaded machine)


def _bwrap_works() -> str | None:
    """Why no sandbox can start on this machine (then the suite is skipped), or None."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed (make setup installs it)"
    probe = subprocess.run([bwrap, "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"],
                           capture_output=True, text=True, env={})
    return None if probe.returncode == 0 else f"bubblewrap cannot create namespaces here: {probe.stderr.strip()}"


pytestmark = pytest.mark.skipif(_bwrap_works() is not None, reason=str(_bwrap_works()))


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    _PREEXISTING.update(_descendants())  # earlier tests' worker pools (e.g. the math reward's) may live on
    box = Sandbox(LIMITS).check()
    yield box
    box.close()
    assert set(_descendants()) - _PREEXISTING == set(), "a sandbox outlived close()"


#: Processes under this one that were there before the sandbox tests (not theirs to clean up).
_PREEXISTING: set[int] = set()


def _descendants() -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def _is_session(pid: int) -> bool:
    """A process of a running sandbox itself: bubblewrap, its init (PID 1 inside) or the supervisor (PID 2 inside)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # gone meanwhile
    nspid = status.split("\nNSpid:")[1].split("\n")[0].split()
    name = status.split("\n")[0].split()[-1]
    return (len(nspid) == 2 and nspid[1] in ("1", "2")) or (len(nspid) == 1 and name == "bwrap")


def _programs() -> list[int]:
    """Processes under this one that are not a sandbox's own: what a program started and left behind."""
    return [pid for pid in _descendants() if pid not in _PREEXISTING and not _is_session(pid)]


def _is_process_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _marked() -> list[int]:
    """Processes whose command line holds MARK (the background processes hostile programs start)."""
    hits = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if MARK.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    hits.append(int(name))
            except OSError:
                pass
    return hits


def _sandbox_uid_processes() -> list[int]:
    """Program processes running as a sandbox uid under this process (none once a run returned)."""
    mine = set(_programs())
    hits = []
    for pid in mine:
        try:
            uid = int(Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0])
        except (OSError, IndexError):
            continue
        if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + 10_000:
            hits.append(pid)
    return hits


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """After every test: no program process under this one, no marked process, nothing of a sandbox uid."""
    yield
    assert _programs() == [], "processes left behind by a sandbox run"
    assert _marked() == [], "a background process started in the sandbox outlived the run"
    assert _sandbox_uid_processes() == []


def _c(body: str, includes: str = "") -> str:
    heads = ["stdio.h", "stdlib.h", "string.h", "unistd.h", "signal.h", "errno.h", "fcntl.h", "sys/types.h",
             "sys/wait.h", "sys/socket.h", "netinet/in.h", "arpa/inet.h", "sys/ptrace.h", "sched.h"]
    return "".join(f"#include <{h}>\n" for h in heads) + includes + body


def _still_works(sandbox: Sandbox) -> None:
    result = sandbox.run("print(sum(map(int, input().split())))", "python", "20 22")
    assert (result.status, result.stdout) == ("ok", "42\n")


# ---------------------------------------------------------------- ordinary statuses


def test_statuses_of_ordinary_programs(sandbox: Sandbox) -> None:
    ok = sandbox.run("import sys\nprint(sys.stdin.read().upper(), end='')", "python", "abc\n")
    assert (ok.status, ok.stdout, ok.exit_code) == ("ok", "ABC\n", 0)
    assert ok.wall_s > 0
    crash = sandbox.run("raise ValueError('boom')", "python")
    assert crash.stderr.startswith("Traceback (most recent call last):\n  File \"/tmp/main.py\"")  # no frame of ours
    assert crash.stderr.startswith('Traceback (most recent call last):\n  File "/tmp/main.py"')  # none of ours
    assert sandbox.run("import sys; sys.exit(3)", "python").exit_code == 3
    syntax = sandbox.run("def f(:\n  pass", "python")
    assert syntax.status == "compile_error" and "SyntaxError" in syntax.stderr
    compile_error = sandbox.run("int main() { return undeclared; }", "c")
    assert compile_error.status == "compile_error" and "undeclared" in compile_error.stderr
    abort = sandbox.run(_c("int main() { abort(); }"), "c")
    assert (abort.status, abort.exit_code) == ("runtime_error", -6)
    segv = sandbox.run(_c("int main() { volatile int *p = 0; return *p; }"), "c")
    assert (segv.status, segv.exit_code) == ("runtime_error", -11)
    cpp = sandbox.run("#include <iostream>\nint main(){long a,b; std::cin>>a>>b; std::cout<<a*b<<'\\n';}", "cpp",
                      "6 7")
    assert (cpp.status, cpp.stdout) == ("ok", "42\n")


def test_languages_and_limits_are_validated() -> None:
    assert [normalize_language(x) for x in ("Python3", "c", "C++", "cxx", None)] == ["python", "c", "cpp", "cpp",
                                                                                       "python"]
    from posttrain.core.errors import DataError

    with pytest.raises(DataError, match="unsupported language 'java'"):
        normalize_language("java")
    with pytest.raises(DataError, match="timeout_s"):
        Limits(timeout_s=0).check()


def test_tests_of_one_call_are_isolated_from_each_other(sandbox: Sandbox) -> None:
    """A test cannot leave files, processes or state for the next one: each starts in a fresh process and /tmp."""
    program = (
        "import os, subprocess, sys\n"
        "mode = input()\n"
        "if mode == 'dirty':\n"
        "    open('/tmp/left', 'w').write('x'); open('/dev/shm/left', 'w').write('x')\n"
        "    os.makedirs('/tmp/locked/deep'); os.chmod('/tmp/locked', 0)\n"
        f"    subprocess.Popen(['sleep', '{MARK}'], start_new_session=True)\n"
        "    sys.modules['json'] = None\n"
        "    print('dirtied')\n"
        "else:\n"
        "    procs = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        f"    marked = [p for p in procs if b'{MARK}' in open(f'/proc/{{p}}/cmdline', 'rb').read()]\n"
        "    import json\n"
        "    print(sorted(os.listdir('/tmp')), os.listdir('/dev/shm'), len(marked), json.dumps(1))\n"
    )
    compiled, results = sandbox.run_tests(program, "python", ["dirty", "clean", "dirty", "clean"])
    assert compiled is None
    assert [r.stdout for r in results] == ["dirtied\n", "['main.py'] [] 0 1\n"] * 2


def test_calls_sharing_a_sandbox_are_isolated_from_each_other(sandbox: Sandbox) -> None:
    """Calls of one thread reuse its sandbox: the next program finds no file, process or IPC object of the last."""
    dirty = (
        "import ctypes, os, subprocess\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "open('/tmp/left', 'w').write('x'); open('/dev/shm/left', 'w').write('x')\n"
        f"subprocess.Popen(['sleep', '{MARK}'], start_new_session=True)\n"
        "print(libc.shmget(1234, 4096, 0o1666), libc.semget(1234, 1, 0o1666), libc.msgget(1234, 0o1666),"
        " libc.mq_open(b'/q', 0o100 | 2, 0o666, None))\n"
    )
    clean = ("import os\n"
             "procs = [p for p in os.listdir('/proc') if p.isdigit()]\n"
             f"marked = [p for p in procs if b'{MARK}' in open(f'/proc/{{p}}/cmdline', 'rb').read()]\n"
             "shm = open('/proc/sysvipc/shm').read().count('\\n')  # the header line only\n"
             "print(sorted(os.listdir('/tmp')), os.listdir('/dev/shm'), len(marked), shm)")
    assert sandbox.run(dirty, "python").stdout == "-1 -1 -1 -1\n"  # System V and POSIX queues: refused
    assert sandbox.run(clean, "python").stdout == "['main.py'] [] 0 1\n"


def test_c_binary_is_compiled_once_and_cannot_be_changed_by_a_test(sandbox: Sandbox) -> None:
    program = _c('int main() { char m[8] = {0}; if (scanf("%7s", m) != 1) return 2;\n'
                 '  if (!strcmp(m, "smash")) { FILE *f = fopen("/tmp/prog", "w"); if (f) fputs("junk", f);\n'
                 '    unlink("/tmp/prog"); puts("smashed"); return 0; }\n'
                 '  printf("%d\\n", (int)strlen(m)); return 0; }')
    compiled, results = sandbox.run_tests(program, "c", ["smash", "abc", "smash", "hello"])
    assert compiled is not None and compiled.status == "ok"
    assert [r.stdout for r in results] == ["smashed\n", "3\n", "smashed\n", "5\n"]


# ---------------------------------------------------------------- the host's files and secrets

WRITE_PY = """
import os, sys
for path in sys.stdin.read().split():
    try:
        with open(path, 'w') as f:
            f.write('escaped')
        print('WROTE', path)
    except OSError as e:
        print('refused', path, e.errno)
"""
WRITE_C = _c("""int main() { char path[4096];
  while (scanf("%4095s", path) == 1) { FILE *f = fopen(path, "w");
    if (f) { fputs("escaped", f); fclose(f); printf("WROTE %s\\n", path); }
    else printf("refused %s %d\\n", path, errno); }
  return 0; }""")


@pytest.mark.parametrize("language", ["python", "c"])
def test_nothing_is_written_on_the_host(sandbox: Sandbox, tmp_path: Path, language: str) -> None:
    targets = [tmp_path / "escaped.txt", ROOT / f"escaped-{MARK}.txt", Path.home() / f"escaped-{MARK}.txt",
               Path(f"/tmp/escaped-{MARK}.txt"), Path("/etc/escaped"), Path(f"/usr/escaped-{MARK}")]
    result = sandbox.run(WRITE_PY if language == "python" else WRITE_C, language,
                         "\n".join(map(str, targets)))
    assert result.status == "ok", result.stderr
    # /tmp/escaped-… lands in the sandbox's private /tmp; every other path is refused
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["refused"] * 3 + ["WROTE"] + ["refused"] * 2
    assert [t for t in targets if t.exists()] == []


SNOOP_PY = """
import os, sys
print(dict(os.environ))
for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['self']:
    for leaf in ('environ', 'cmdline'):
        try:
            print(pid, leaf, open(f'/proc/{pid}/{leaf}', 'rb').read())
        except OSError as e:
            print(pid, leaf, e)
for path in sys.stdin.read().split() + ['/etc/shadow', '/root/.bash_history', '/proc/1/root/etc/hostname']:
    try:
        print(path, open(path).read())
    except OSError as e:
        print(path, e)
for top in ('/', '/tmp', '/home', '/root', '/work', '/etc'):
    try:
        print(top, os.listdir(top))
    except OSError as e:
        print(top, e)
"""
SNOOP_C = _c("""extern char **environ;
static void dump(const char *path) { char buf[65536]; int fd = open(path, O_RDONLY);
  if (fd < 0) { printf("%s: %d\\n", path, errno); return; }
  ssize_t n = read(fd, buf, sizeof buf - 1); if (n < 0) n = 0; buf[n] = 0;
  for (ssize_t i = 0; i < n; i++) if (!buf[i]) buf[i] = ' ';
  printf("%s: %s\\n", path, buf); close(fd); }
int main() { char path[4096];
  for (char **e = environ; *e; e++) printf("env %s\\n", *e);
  dump("/proc/1/environ"); dump("/proc/self/environ"); dump("/proc/1/cmdline"); dump("/etc/shadow");
  while (scanf("%4095s", path) == 1) dump(path);
  return 0; }""")


@pytest.mark.parametrize("language", ["python", "c"])
def test_host_secrets_and_environment_do_not_leak(sandbox: Sandbox, tmp_path: Path, language: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"s3cr3t-{random.randint(10**8, 10**9)}"
    monkeypatch.setenv("POSTTRAIN_TEST_SECRET", secret)
    (tmp_path / "secret.txt").write_text(secret)
    home_secret = Path.home() / f".posttrain-secret-{MARK}"
    home_secret.write_text(secret)
    try:
        result = sandbox.run(SNOOP_PY if language == "python" else SNOOP_C, language,
                             f"{tmp_path / 'secret.txt'} {home_secret}", max_output_bytes=1 << 20)
    finally:
        home_secret.unlink()
    assert result.status == "ok", result.stderr
    assert "/proc/1/environ" in result.stdout or "1 environ" in result.stdout  # it did look
    output = result.stdout + result.stderr
    assert secret not in output and "POSTTRAIN_TEST_SECRET" not in output
    environment = [line for line in result.stdout.splitlines() if line.startswith(("{", "env "))]
    assert environment and not any(str(ROOT) in line or "/root" in line for line in environment)


# ---------------------------------------------------------------- network


class Listener:
    """A TCP and a UDP socket on the host's 127.0.0.1 that record anything reaching them."""

    def __init__(self) -> None:
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.tcp.settimeout(0.2)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self.seen: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, addr = self.tcp.accept()
                self.seen.append(f"tcp connection from {addr}")
                conn.close()
            except TimeoutError:
                pass
            try:
                data, addr = self.udp.recvfrom(4096)
                self.seen.append(f"udp {data!r} from {addr}")
            except TimeoutError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.tcp.close()
        self.udp.close()


NET_PY = """
import socket, sys
tcp, udp = map(int, sys.stdin.read().split())
for host in ('127.0.0.1', 'localhost', '::1', '10.0.2.2', '8.8.8.8'):
    try:
        socket.create_connection((host, tcp), timeout=1).sendall(b'hello')
        print('CONNECTED', host)
    except OSError as e:
        print('no tcp', host, e)
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello', ('127.0.0.1', udp))
    except OSError as e:
        print('no udp', e)
"""
NET_C = _c("""int main() { int tcp, udp; if (scanf("%d %d", &tcp, &udp) != 2) return 2;
  struct sockaddr_in a; memset(&a, 0, sizeof a); a.sin_family = AF_INET; a.sin_addr.s_addr = inet_addr("127.0.0.1");
  a.sin_port = htons(tcp); int s = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) { write(s, "hello", 5); puts("CONNECTED"); }
  else printf("no tcp %d\\n", errno);
  a.sin_port = htons(udp); int u = socket(AF_INET, SOCK_DGRAM, 0);
  sendto(u, "hello", 5, 0, (struct sockaddr *)&a, sizeof a); return 0; }""")


@pytest.mark.parametrize("language", ["python", "c"])
def test_no_network_reaches_a_host_listener(sandbox: Sandbox, language: str) -> None:
    listener = Listener()
    try:
        ports = f"{listener.tcp.getsockname()[1]} {listener.udp.getsockname()[1]}"
        result = sandbox.run(NET_PY if language == "python" else NET_C, language, ports)
        time.sleep(0.5)  # anything sent would have arrived by now
    finally:
        listener.close()
    assert result.status == "ok", result.stderr
    assert "CONNECTED" not in result.stdout and "no tcp" in result.stdout
    assert listener.seen == []


# ---------------------------------------------------------------- processes


FORK_BOMB_PY = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
FORK_BOMB_C = _c("int main() { for (;;) fork(); }")


@pytest.mark.parametrize("language", ["python", "c"])
def test_fork_bomb_is_contained(sandbox: Sandbox, language: str) -> None:
    start = time.monotonic()
    result = sandbox.run(FORK_BOMB_PY if language == "python" else FORK_BOMB_C, language)
    assert result.status in ("timeout", "killed", "runtime_error"), result
    assert time.monotonic() - start < BOUND_S
    _still_works(sandbox)


def test_a_fork_bomb_does_not_starve_a_concurrent_run(sandbox: Sandbox) -> None:
    """Each concurrent run has its own process budget (its own uid / user namespace)."""
    bomb: list[RunResult] = []
    thread = threading.Thread(target=lambda: bomb.append(sandbox.run(FORK_BOMB_PY, "python")))
    thread.start()
    time.sleep(0.5)  # the bomb is at its process limit by now
    spawner = "import subprocess\nprint(sum(subprocess.run(['true']).returncode == 0 for _ in range(8)))"
    try:
        result = sandbox.run(spawner, "python")
    finally:
        thread.join()
    assert (result.status, result.stdout) == ("ok", "8\n")
    assert bomb[0].status in ("timeout", "killed", "runtime_error")


BACKGROUND_PY = f"""
import os, subprocess
subprocess.Popen(['sleep', '{MARK}'], start_new_session=True)
subprocess.Popen(['sh', '-c', 'nohup sleep {MARK} >/dev/null 2>&1 &'])
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp('sleep', ['sleep', '{MARK}'])
    os._exit(0)
print('parent done')
"""
BACKGROUND_C = _c(f"""int main() {{
  if (fork() == 0) {{ setsid(); if (fork() == 0) {{ execlp("sleep", "sleep", "{MARK}", (char *)0); }} _exit(0); }}
  if (fork() == 0) {{ signal(SIGHUP, SIG_IGN); execlp("sleep", "sleep", "{MARK}", (char *)0); }}
  puts("parent done"); return 0; }}""")


@pytest.mark.parametrize("language", ["python", "c"])
def test_background_processes_do_not_outlive_the_run(sandbox: Sandbox, language: str) -> None:
    result = sandbox.run(BACKGROUND_PY if language == "python" else BACKGROUND_C, language)
    assert (result.status, result.stdout) == ("ok", "parent done\n"), result.stderr
    assert _marked() == []  # at once, not eventually


KILL_PARENT_PY = """
import os, signal
for target in (os.getppid(), 1, -1, 0):
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        try:
            os.kill(target, sig)
        except OSError as e:
            print('kill', target, sig, e)
print('still here')
"""
KILL_PARENT_C = _c("""int main() { kill(getppid(), SIGKILL); kill(1, SIGKILL); kill(-1, SIGKILL); kill(0, SIGKILL);
  puts("still here"); return 0; }""")


@pytest.mark.parametrize("language", ["python", "c"])
def test_killing_the_parent_ends_only_the_sandbox(sandbox: Sandbox, language: str) -> None:
    start = time.monotonic()
    _compiled, results = sandbox.run_tests(KILL_PARENT_PY if language == "python" else KILL_PARENT_C, language,
                                          ["", ""])
    assert time.monotonic() - start < BOUND_S
    assert all(r.status in ("killed", "timeout") for r in results), results
    assert os.getppid() > 1  # this process and its parent live on
    _still_works(sandbox)


def test_a_stopped_supervisor_is_torn_down_by_the_host_timeout() -> None:
    """A program that stops its supervisor (SIGSTOP) hangs the sandbox: the host kills the whole namespace."""
    sandbox = Sandbox(Limits(timeout_s=1.0, memory_mb=256, max_processes=16, tmp_mb=16)).check()
    program = (f"import os, signal, subprocess\nsubprocess.Popen(['sleep', '{MARK}'], start_new_session=True)\n"
               "os.kill(os.getppid(), signal.SIGSTOP)\nimport time\ntime.sleep(60)")
    start = time.monotonic()
    _compiled, results = sandbox.run_tests(program, "python", ["", ""])
    assert time.monotonic() - start < BOUND_S
    assert [r.status for r in results] == ["timeout", "timeout"]
    assert "took more than" in results[0].stderr


FORGE_PY = """
import os
line = repr({'test': 1, 'result': {'status': 'ok', 'stdout': 'FORGED\\\\n', 'stderr': '', 'exit_code': 0,
            'wall_s': 0.0, 'passed': True, 'truncated': False}}) + '\\n'
for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:
    for path in [f'/proc/{pid}/mem'] + [f'/proc/{pid}/fd/{n}' for n in range(16)]:
        try:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, line.encode())
            print('WROTE', path)
        except OSError:
            pass
print('tried')
"""


def test_a_test_cannot_forge_the_results_of_the_next(sandbox: Sandbox) -> None:
    _compiled, results = sandbox.run_tests(FORGE_PY + "\nif input() == 'b': print('real')", "python", ["a", "b"])
    assert "WROTE" not in results[0].stdout
    assert results[1].stdout == "tried\nreal\n"


# ---------------------------------------------------------------- resources


@pytest.mark.parametrize(("language", "program"), [
    ("python", "x = []\nwhile True:\n    x.append(bytearray(10**7))"),
    ("cpp", "#include <vector>\nint main(){std::vector<std::vector<char>> v; for(;;) v.emplace_back(1<<20,'a');}"),
])
def test_memory_bombs_hit_the_memory_limit(sandbox: Sandbox, language: str, program: str) -> None:
    result = sandbox.run(program, language)
    assert result.status == "memory_limit", result


def test_c_memory_bomb_is_bounded(sandbox: Sandbox) -> None:
    program = _c("int main() { size_t n = 0; for (;;) { char *p = malloc(1 << 20); if (!p) { printf(\"%zu\\n\", n);"
                 " return 3; } memset(p, 1, 1 << 20); n++; } }")
    result = sandbox.run(program, "c")
    assert (result.status, result.exit_code) == ("runtime_error", 3)
    assert int(result.stdout) <= LIMITS.memory_mb


@pytest.mark.parametrize(("language", "program"), [
    ("python", "while True:\n    pass"),
    ("python", "import time\ntime.sleep(1000)"),
    ("python", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.01)"),
    ("c", "int main() { for (;;); }"),
    ("c", _c("int main() { sleep(1000); return 0; }")),
])
def test_loops_and_sleeps_time_out(sandbox: Sandbox, language: str, program: str) -> None:
    start = time.monotonic()
    result = sandbox.run(program, language)
    assert result.status == "timeout", result
    assert LIMITS.timeout_s <= result.wall_s < BOUND_S and time.monotonic() - start < BOUND_S


@pytest.mark.parametrize(("language", "program"), [
    ("python", "import sys\nwhile True:\n    sys.stdout.write('x' * 1000)"),
    ("python", "import sys\nwhile True:\n    sys.stderr.write('e' * 1000)"),
    ("c", _c('int main() { for (;;) fputs("yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\\n", stdout); }')),
])
def test_huge_output_is_cut_off(sandbox: Sandbox, language: str, program: str) -> None:
    result = sandbox.run(program, language)
    assert result.status == "killed" and "output limit" in result.stderr, result.stderr[-200:]
    assert len(result.stdout.encode()) <= LIMITS.max_output_bytes
    assert len(result.stderr.encode()) <= LIMITS.max_stderr_bytes + 200
    assert result.truncated


FILL_PY = """
import os
total = 0
for top in ('/tmp', '/dev/shm'):
    for i in range(10**6):
        try:
            with open(f'{top}/fill{i}', 'wb') as f:
                f.write(b'x' * (1 << 20))
            total += 1 << 20
        except OSError as e:
            print(top, e.strerror)
            break
print(total)
"""
FILL_C = _c("""int main() { static char buf[1 << 20]; long total = 0; char path[64];
  memset(buf, 'x', sizeof buf);
  for (int i = 0; ; i++) { snprintf(path, sizeof path, "/tmp/fill%d", i); FILE *f = fopen(path, "wb");
    if (!f) break; size_t n = fwrite(buf, 1, sizeof buf, f); if (fclose(f) != 0 || n < sizeof buf) break;
    total += n; }
  printf("%ld\\n", total); return 0; }""")


@pytest.mark.parametrize("language", ["python", "c"])
def test_filling_tmp_stops_at_its_cap(sandbox: Sandbox, language: str) -> None:
    _compiled, results = sandbox.run_tests(FILL_PY if language == "python" else FILL_C, language, ["", ""])
    for result in results:
        assert result.status == "ok", result.stderr
        total = int(result.stdout.split()[-1])
        assert 0 < total <= 2 * (LIMITS.tmp_mb << 20)  # /tmp and /dev/shm, each capped
    assert results[0].stdout == results[1].stdout  # the second test found an empty /tmp again


def test_one_file_cannot_exceed_the_file_size_limit(sandbox: Sandbox) -> None:
    program = ("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "f = open('/tmp/big', 'wb')\ntry:\n    f.write(b'x' * (20 << 20))\nexcept OSError as e:\n"
               "    print(e.strerror)\nimport os\nprint(os.path.getsize('/tmp/big') <= (16 << 20))")
    result = sandbox.run(program, "python", max_file_mb=4)
    assert result.status == "ok", result.stderr
    assert result.stdout.split("\n")[-2] == "True"


# ---------------------------------------------------------------- privileges


PRIVS_PY = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print('uid', os.getuid(), os.geteuid())
print('caps', [l.split()[1] for l in open('/proc/self/status') if l.startswith('Cap')])
print('ptrace', libc.ptrace(0, 0, 0, 0), ctypes.get_errno())
print('unshare', libc.unshare(0x10000000), ctypes.get_errno())
print('mount', libc.mount(b'none', b'/usr', None, 32 | 4096, None), ctypes.get_errno())  # MS_REMOUNT|MS_BIND
print('pids', len([p for p in os.listdir('/proc') if p.isdigit()]))
try:
    open('/usr/bin/escaped', 'w')
    print('usr writable')
except OSError as e:
    print('usr', e.errno)
"""


def test_no_privileges_inside(sandbox: Sandbox) -> None:
    result = sandbox.run(PRIVS_PY, "python")
    assert result.status == "ok", result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["uid"] == "1000 1000"
    assert set(ast.literal_eval(lines["caps"])) == {"0000000000000000"}
    assert lines["ptrace"] == "-1 1" and lines["unshare"] == "-1 1"  # EPERM from the seccomp filter
    assert lines["mount"].startswith("-1")
    assert int(lines["pids"]) <= 3  # bubblewrap's init, the supervisor, this program: no host process visible
    assert lines["usr"] in ("30", "13")  # EROFS or EACCES


def test_seccomp_filter_is_well_formed() -> None:
    program = seccomp_filter("x86_64")
    assert program is not None and len(program) % 8 == 0
    instructions = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    assert instructions[-3:] == [(6, 0, 0, 0x7FFF0000), (6, 0, 0, 0x00050001), (6, 0, 0, 0x80000000)]
    denied = {k for code, jt, _, k in instructions if code == 0x15 and jt}
    assert {101, 321, 272} <= denied  # ptrace, bpf, unshare
    for i, (code, jt, jf, _) in enumerate(instructions):  # every jump lands on a return
        if code in (0x15, 0x35) and i > 1:
            assert instructions[i + 1 + jt][0] == 6 and jf == 0
    assert seccomp_filter("sparc") is None


# ---------------------------------------------------------------- refusing to run without isolation


def test_refuses_without_bubblewrap() -> None:
    with pytest.raises(SandboxUnavailable) as info:
        Sandbox(bwrap="/nonexistent/bwrap").check()
    message = str(info.value)
    assert "bubblewrap" in message and "make setup" in message and "apt-get install bubblewrap" in message
    assert "allow_unsandboxed=True" in message


def test_unsandboxed_only_when_allowed_and_loudly(caplog: pytest.LogCaptureFixture) -> None:
    before = set(_descendants())
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards.sandbox"):
        sandbox = Sandbox(LIMITS, bwrap="/nonexistent/bwrap", allow_unsandboxed=True).check()
    assert sandbox.isolated is False
    assert any("WITHOUT A SANDBOX" in r.getMessage() for r in caplog.records)
    assert sandbox.run("print(input()[::-1])", "python", "abc").stdout == "cba\n"
    assert sandbox.run("import time\ntime.sleep(100)", "python").status == "timeout"
    assert sandbox.run(_c("int main(){puts(\"c\");}"), "c").stdout == "c\n"
    sandbox.close()
    assert set(_descendants()) - before == set()


def test_without_reuse_nothing_outlives_a_run() -> None:
    before = set(_descendants())
    sandbox = Sandbox(LIMITS, reuse=False).check()
    assert sandbox.run(BACKGROUND_PY, "python").stdout == "parent done\n"
    assert set(_descendants()) - before == set()


def test_sessions_are_per_thread_and_end_with_close() -> None:
    before = set(_descendants())
    sandbox = Sandbox(LIMITS).check()
    threads = [threading.Thread(target=sandbox.run, args=("print(1)",)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # each thread's sandbox died with its thread (bubblewrap's --die-with-parent); the main thread's is alive
    assert sandbox.run("print(2)").stdout == "2\n"
    live = [pid for pid in set(_descendants()) - before if _is_process_alive(pid)]
    assert len(live) == 3  # bubblewrap, its init, the supervisor (the threads' bubblewraps are zombies until reaped)
    sandbox.close()
    assert set(_descendants()) - before == set()


def test_cli_names_the_fix_when_bubblewrap_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"completion": "```python\\nprint(1)\\n```", "tests": [{"input": "", "output": "1"}]}\n')
    env = {**os.environ, "POSTTRAIN_BWRAP": "/nonexistent/bwrap"}
    proc = subprocess.run([sys.executable, "-m", "posttrain.cli", "rewards", "score", "--reward", "code",
                           "--input", str(src), "--output", str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "make setup" in proc.stderr and "Traceback" not in proc.stderr
