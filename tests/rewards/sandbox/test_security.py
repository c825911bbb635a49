"""Hostile programs, in Python and C, against the real bubblewrap sandbox: the host's files, secrets,
network and processes, the supervisor, and privileges.

Each is contained: nothing written on the host, the listener sees nothing, no secret in any output,
no process left behind (checked after every test by scanning /proc), bounded wall time, this
process alive, and the sandbox still works afterwards.
"""

from __future__ import annotations

import ast
import os
import random
import time
from pathlib import Path

import pytest

from rewards.sandbox import Limits, Sandbox
from tests.rewards.sandbox.helpers import (
    BOUND_S,
    MARK,
    ROOT,
    Listener,
    c_program,
    needs_bwrap,
    still_works,
)

pytestmark = [needs_bwrap, pytest.mark.usefixtures("no_leftovers")]


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
WRITE_C = c_program("""int main() { char path[4096];
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
SNOOP_C = c_program("""extern char **environ;
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
NET_C = c_program("""int main() { int tcp, udp; if (scanf("%d %d", &tcp, &udp) != 2) return 2;
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


# ---------------------------------------------------------------- the supervisor


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
KILL_PARENT_C = c_program("""int main() {
  kill(getppid(), SIGKILL); kill(1, SIGKILL); kill(-1, SIGKILL); kill(0, SIGKILL);
  puts("still here"); return 0; }""")


@pytest.mark.parametrize("language", ["python", "c"])
def test_killing_the_parent_ends_only_the_sandbox(sandbox: Sandbox, language: str) -> None:
    start = time.monotonic()
    _compiled, results = sandbox.run_tests(KILL_PARENT_PY if language == "python" else KILL_PARENT_C, language,
                                          ["", ""])
    assert time.monotonic() - start < BOUND_S
    assert all(r.status in ("killed", "timeout") for r in results), results
    assert os.getppid() > 1  # this process and its parent live on
    still_works(sandbox)


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


# ---------------------------------------------------------------- the pass decision of the test harness

#: Each tries to make check() "pass" without a right answer. Before the harness ran check() in a process
#: of its own, two of them passed: the pass token was in the caller's frame (and fd 3 writable), and
#: `==` ran the candidate's __eq__.
FORGERIES = {
    "the token from the caller's frame": """
import os, sys
frame = sys._getframe(1)
while frame is not None:
    if 'token' in frame.f_locals and frame.f_locals['token']:
        os.write(3, frame.f_locals['token'].encode())
        os._exit(0)
    frame = frame.f_back
def add(a, b):
    return 0
""",
    "the token from memory with ctypes, written to every fd": """
import ctypes, gc, os, re
found = set()
for obj in gc.get_objects():
    if isinstance(obj, dict):
        for value in obj.values():
            if isinstance(value, str) and re.fullmatch('[0-9a-f]{32}', value):
                found.add(value)
for fd in range(3, 64):
    for token in found | {'pass'}:
        try:
            os.write(fd, token.encode())
        except OSError:
            pass
ctypes.CDLL(None)._exit(0)
def add(a, b):
    return 0
""",
    "the test process's fds and memory through /proc": """
import os
for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:
    for path in [f'/proc/{pid}/mem'] + [f'/proc/{pid}/fd/{n}' for n in range(8)]:
        try:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, b'pass')
            print('WROTE', path)
        except OSError:
            pass
def add(a, b):
    return 0
""",
    "an answer equal to everything": """
class Equal:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def add(a, b):
    return Equal()
""",
    "stopping or killing the other processes": """
import os, signal
def add(a, b):
    for pid in [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:
        try:
            os.kill(pid, signal.SIGSTOP if pid % 2 else signal.SIGKILL)
        except OSError:
            pass
    return 3
""",
    "replacing check() through builtins": """
import builtins
builtins.AssertionError = type('Quiet', (Exception,), {})
def add(a, b):
    return 0
""",
}
ADD_CHECK = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"


def test_the_check_harness_cannot_be_forged_from_the_candidate(sandbox: Sandbox) -> None:
    assert sandbox.run_check("def add(a, b):\n    return a + b", ADD_CHECK, "add").passed is True
    verdicts = {name: sandbox.run_check(program, ADD_CHECK, "add") for name, program in FORGERIES.items()}
    assert {name: bool(r.passed) for name, r in verdicts.items()} == dict.fromkeys(FORGERIES, False), verdicts
    assert "WROTE" not in verdicts["the test process's fds and memory through /proc"].stdout
    still_works(sandbox)
