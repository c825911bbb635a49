"""One `posttrain run` per output folder: DIR/posttrain.lock.

The lock is an exclusive `flock` on DIR/posttrain.lock, which also records who holds it (PID,
host, start time, command). The kernel drops a `flock` when its holder dies, so a run killed with
SIGKILL leaves only the record behind: the next run gets the lock, finds the recorded PID gone,
and takes over with a warning. (Where the file system cannot lock, the record alone decides: a
holder alive on this host, or on another host where we cannot tell, is never overridden.) A stage
run under `accelerate launch` shares its parent's lock: the launcher inherits the locked file, and
workers check that the run which launched them holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from posttrain.core.errors import RunFolderError
from posttrain.core.run_folder import LOCK_FILE

log = logging.getLogger("posttrain.lock")

#: Set for launched workers: the PID of the run that holds the lock they work under.
HOLDER_ENV = "POSTTRAIN_LOCK_HOLDER"


class RunLockedError(RunFolderError):
    """Another run holds the output folder."""


@dataclass
class Holder:
    pid: int
    host: str
    started: str
    command: str = ""

    @classmethod
    def me(cls) -> Holder:
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"),
                   " ".join(sys.argv)[:300])

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}, started {self.started}"

    def alive(self) -> bool | None:
        """Whether the holder still runs (None: on another host, we cannot tell)."""
        if self.host != socket.gethostname():
            return None
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) has stopped running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_holder(run_dir: Path) -> Holder | None:
    try:
        raw = json.loads((run_dir / LOCK_FILE).read_text())
        return Holder(int(raw["pid"]), str(raw["host"]), str(raw["started"]), str(raw.get("command", "")))
    except (OSError, ValueError, TypeError, KeyError):
        return None


@dataclass
class _Held:
    fd: int
    count: int


_held: dict[Path, _Held] = {}


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[int]:
    """Hold DIR's lock for the duration (re-entrant within a process); yields the locked file's descriptor.

    Raises `RunLockedError` (one line naming the holder) when another live run holds it.
    """
    key = run_dir.absolute()
    if key in _held:
        _held[key].count += 1
        try:
            yield _held[key].fd
        finally:
            _held[key].count -= 1
        return
    fd = _acquire(run_dir)
    _held[key] = _Held(fd, 1)
    try:
        yield fd
    finally:
        del _held[key]
        _release(run_dir, fd)


def _acquire(run_dir: Path) -> int:
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(_held_message(run_dir, read_holder(run_dir))) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            locked = False
            log.warning("%s: this file system cannot lock files; relying on the PID recorded in it", path)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: take the new one
    previous = read_holder(run_dir)
    if previous is not None and previous.pid != os.getpid():
        alive = previous.alive()
        if not locked and alive is not False:
            os.close(fd)
            raise RunLockedError(_held_message(run_dir, previous))
        state = "is gone" if alive is False else "no longer holds it"
        log.warning("%s: taking over a stale lock: the run that held it (%s) %s", path, previous.describe(), state)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(asdict(Holder.me())).encode(), 0)
    os.fsync(fd)
    return fd


def _release(run_dir: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        (run_dir / LOCK_FILE).unlink()  # still locked: a run that opened it meanwhile retries on the new file
    os.close(fd)


def _held_message(run_dir: Path, holder: Holder | None) -> str:
    if holder is None:
        return f"{run_dir} is in use by another posttrain run: wait for it to finish or stop it"
    alive = holder.alive()
    if alive is None:
        hint = f"if that run is gone, delete {run_dir / LOCK_FILE}"
    elif alive:
        hint = "wait for it to finish or stop it"
    else:
        hint = "that process is gone but processes it started still hold the lock: stop them first"
    return f"{run_dir} is in use by another posttrain run ({holder.describe()}): {hint}"


def check_worker_lock(run_dir: Path) -> None:
    """A launched worker runs only under the lock of the `posttrain run` that launched it."""
    expected = os.environ.get(HOLDER_ENV)
    holder = read_holder(run_dir)
    if expected is None or holder is None or str(holder.pid) != expected:
        raise RunLockedError(f"{run_dir} is not locked by the posttrain run that launched this worker: "
                             "workers are started by `posttrain run`, not by hand")
