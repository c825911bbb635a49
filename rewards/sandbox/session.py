"""A kept sandbox (bubblewrap + the supervisor) that runs jobs one after another, and the per-thread set of them.

Start-up (bubblewrap and an interpreter, ~15-25 ms) would dominate a HumanEval problem (~2 ms), so a
thread keeps its sandbox for its next program. Between jobs nothing of a program is left: the
supervisor kills and reaps every process and wipes /tmp and /dev/shm after each test, and ends
itself if it cannot. A session that timed out, died or was killed by its program is torn down and
replaced. Sessions are per thread because bubblewrap's --die-with-parent follows the thread that
started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from rewards.sandbox.bwrap import Launch
from rewards.sandbox.protocol import RecordReader


class Session:
    """One running sandbox. It owns `resources` (e.g. its uid slot): closed with it, or at once if it fails to start."""

    def __init__(self, launch: Launch, resources: contextlib.ExitStack):
        self.owner = os.getpid()
        self._stack = resources
        self.child: int | None = None  # host PID of the sandbox's init (its PID namespace dies with it)
        self._reader = RecordReader()
        self._err = b""
        fds = dict(launch.fds)
        self.info_r = fds.pop("info_r", None)
        try:
            try:
                self.proc = subprocess.Popen(launch.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, bufsize=0, start_new_session=True,
                                             close_fds=True, cwd="/", pass_fds=tuple(fds.values()), **launch.popen)
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

    def request(self, job: bytes, timeout_s: float) -> tuple[list[dict[str, Any]], str, str]:
        """Send one encoded job; (records, "done" | "timeout" | "died", detail) once it is answered or bounded."""
        deadline = time.monotonic() + timeout_s
        records: list[dict[str, Any]] = []
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(job)
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
                    for record in self._reader.feed(chunk):
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


class Sessions:
    """The live sessions of one Sandbox: per thread, one per key (sessions of different bounds differ)."""

    def __init__(self, start: Callable[[Any], Session]) -> None:
        self._start = start
        self._local = threading.local()
        self._all: list[Session] = []
        self._lock = threading.Lock()

    def _mine(self) -> dict[Hashable, Session]:
        sessions = getattr(self._local, "sessions", None)
        if sessions is None or self._local.pid != os.getpid():  # none yet, or inherited through fork
            sessions = self._local.sessions = {}
            self._local.pid = os.getpid()
        return sessions

    def get(self, key: Hashable) -> tuple[Session, bool]:
        """This thread's live session for `key` (started if needed), and whether it was just started."""
        sessions = self._mine()
        session = sessions.get(key)
        if session is not None and session.alive():
            return session, False
        if session is not None:
            self.discard(key, session)
        session = self._start(key)
        sessions[key] = session
        with self._lock:
            dead = [s for s in self._all if not s.alive()]
            self._all = [s for s in self._all if s.alive()] + [session]
        for old in dead:  # e.g. the sandboxes of threads that ended: reap them, free their uids
            old.close()
        return session, True

    def discard(self, key: Hashable, session: Session) -> None:
        """End `session` and forget it as this thread's session for `key`."""
        session.close()
        sessions = getattr(self._local, "sessions", {})
        if sessions.get(key) is session:
            del sessions[key]

    def close(self) -> None:
        """End every session (all threads'); their runs must be finished."""
        with self._lock:
            sessions, self._all = self._all, []
        for session in sessions:
            session.close()
        self._local = threading.local()


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
