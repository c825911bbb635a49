"""What the sandbox tests share: bounds, the processes they look for on the host, C boilerplate.

After every test that runs programs (`no_leftovers` in conftest.py) no process of a program may be
left under this one: none that is not a sandbox's own, none carrying MARK, none of a sandbox uid.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from rewards.sandbox import SANDBOX_UID_BASE, Limits, Sandbox
from rewards.sandbox.uids import SANDBOX_UID_END

ROOT = Path(__file__).resolve().parents[3]
#: A number no other process on this machine has in its command line: background programs sleep for it.
MARK = f"{random.randint(10**6, 10**7 - 1)}.25"
LIMITS = Limits(timeout_s=2.0, memory_mb=256, max_processes=16, tmp_mb=16, max_output_bytes=64 << 10,
                compile_timeout_s=60.0)
BOUND_S = 40.0  # wall-time bound for one hostile run (2 s limits; generous for a loaded machine)


def bwrap_works() -> str | None:
    """Why no sandbox can start on this machine (then the suite is skipped), or None."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed (make setup installs it)"
    probe = subprocess.run([bwrap, "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"],
                           capture_output=True, text=True, env={})
    return None if probe.returncode == 0 else f"bubblewrap cannot create namespaces here: {probe.stderr.strip()}"


#: Skips a module where bubblewrap cannot start (then nothing of the sandbox can be tested for real).
needs_bwrap = pytest.mark.skipif(bwrap_works() is not None, reason=str(bwrap_works()))


#: Processes under this one that were there before the sandbox tests (not theirs to clean up).
PREEXISTING: set[int] = set()


def descendants() -> list[int]:
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


def is_session(pid: int) -> bool:
    """A process of a running sandbox itself: bubblewrap, its init (PID 1 inside) or the supervisor (PID 2 inside)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # gone meanwhile
    nspid = status.split("\nNSpid:")[1].split("\n")[0].split()
    name = status.split("\n")[0].split()[-1]
    return (len(nspid) == 2 and nspid[1] in ("1", "2")) or (len(nspid) == 1 and name == "bwrap")


def programs() -> list[int]:
    """Processes under this one that are not a sandbox's own: what a program started and left behind."""
    return [pid for pid in descendants() if pid not in PREEXISTING and not is_session(pid)]


def is_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def marked() -> list[int]:
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


def sandbox_uid_processes() -> list[int]:
    """Program processes running as a sandbox uid under this process (none once a run returned)."""
    mine = set(programs())
    hits = []
    for pid in mine:
        try:
            uid = int(Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0])
        except (OSError, IndexError):
            continue
        if SANDBOX_UID_BASE <= uid < SANDBOX_UID_END:
            hits.append(pid)
    return hits


#: Leaves background processes (marked) behind, in three ways, and exits at once.
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


def c_program(body: str, includes: str = "") -> str:
    heads = ["stdio.h", "stdlib.h", "string.h", "unistd.h", "signal.h", "errno.h", "fcntl.h", "sys/types.h",
             "sys/wait.h", "sys/socket.h", "netinet/in.h", "arpa/inet.h", "sys/ptrace.h", "sched.h"]
    return "".join(f"#include <{h}>\n" for h in heads) + includes + body


def still_works(sandbox: Sandbox) -> None:
    result = sandbox.run("print(sum(map(int, input().split())))", "python", "20 22")
    assert (result.status, result.stdout) == ("ok", "42\n")


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
