"""The sandbox a thread keeps between calls: nothing of one program reaches the next; sessions end with close."""

from __future__ import annotations

import threading
import time

import pytest

from rewards.sandbox import Sandbox
from tests.rewards.sandbox.helpers import (
    BACKGROUND_PY,
    LIMITS,
    MARK,
    descendants,
    is_alive,
    needs_bwrap,
)

pytestmark = [needs_bwrap, pytest.mark.usefixtures("no_leftovers")]


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



def test_without_reuse_nothing_outlives_a_run() -> None:
    before = set(descendants())
    sandbox = Sandbox(LIMITS, reuse=False).check()
    assert sandbox.run(BACKGROUND_PY, "python").stdout == "parent done\n"
    assert set(descendants()) - before == set()


def test_sessions_are_per_thread_and_end_with_close() -> None:
    before = set(descendants())
    sandbox = Sandbox(LIMITS).check()
    threads = [threading.Thread(target=sandbox.run, args=("print(1)",)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # each thread's sandbox died with its thread (bubblewrap's --die-with-parent); the main thread's is alive
    assert sandbox.run("print(2)").stdout == "2\n"
    # The kernel kills a dead thread's sandbox asynchronously: on a loaded machine that takes a moment.
    deadline = time.monotonic() + 20
    while len(live := [pid for pid in set(descendants()) - before if is_alive(pid)]) > 3 and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(live) == 3  # bubblewrap, its init, the supervisor (the threads' bubblewraps are zombies until reaped)
    sandbox.close()
    assert set(descendants()) - before == set()
