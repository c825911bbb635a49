"""One unprivileged uid per live sandbox, when this process is root.

The kernel does not enforce RLIMIT_NPROC for uid 0, and counts it per user: a fork bomb in one
sandbox must not use up the process budget of the sandboxes running beside it. So bubblewrap runs
as a uid no one else has, and a uid is reused only once its sandbox ended.

"No one else" includes the other processes of the same job: GRPO on several processes, data-loader
workers, pytest-xdist workers, two runs on one machine. Each process draws from its own block of
`SLOTS_PER_PROCESS` uids, chosen by its pid (re-chosen after a fork), so two processes' sandboxes
never share a uid unless their pids are `PROCESS_BLOCKS` apart.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

#: First uid used for sandboxes when this process is root; every sandbox uid is in
#: [SANDBOX_UID_BASE, SANDBOX_UID_BASE + PROCESS_BLOCKS * SLOTS_PER_PROCESS), below 2**31.
SANDBOX_UID_BASE = 1_500_000_000
#: Live sandboxes one process can hold at once (a worker pool per reward is far smaller).
SLOTS_PER_PROCESS = 512
#: Distinct process blocks: pid modulo this picks the block.
PROCESS_BLOCKS = 1 << 20
SANDBOX_UID_END = SANDBOX_UID_BASE + PROCESS_BLOCKS * SLOTS_PER_PROCESS


class UidSlots:
    """Hands out `base + i` for i below `span`: an index given back earlier, else the next new one;
    thread-safe. Without `base`, the block of this process's pid, chosen again in a forked child."""

    def __init__(self, base: int | None = None, span: int = SLOTS_PER_PROCESS) -> None:
        self._fixed = base
        self.span = span
        self._lock = threading.Lock()
        self._reset()

    @property
    def base(self) -> int:
        with self._lock:
            self._reset_after_fork()
            return self._base

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._base = self._fixed if self._fixed is not None else process_base(self._pid)
        self._free: list[int] = []
        self._next = 0

    def _reset_after_fork(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's live slots are not ours, and neither is its block
            self._reset()

    @contextlib.contextmanager
    def slot(self) -> Iterator[int]:
        """A uid that no other live sandbox holds, for as long as the `with` block lasts."""
        with self._lock:
            self._reset_after_fork()
            if self._free:
                index = self._free.pop()
            elif self._next < self.span:
                index, self._next = self._next, self._next + 1
            else:
                raise RuntimeError(f"more than {self.span} sandboxes live at once in one process")
            base, pid = self._base, self._pid
        try:
            yield base + index
        finally:
            with self._lock:
                if self._pid == pid:
                    self._free.append(index)


def process_base(pid: int) -> int:
    """The first uid of the block that process `pid` draws from."""
    return SANDBOX_UID_BASE + (pid % PROCESS_BLOCKS) * SLOTS_PER_PROCESS


#: The process-wide allocator: every Sandbox object draws from it, so no two live sandboxes share a uid.
UIDS = UidSlots()
