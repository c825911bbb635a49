"""One unprivileged uid per live sandbox, when this process is root.

The kernel does not enforce RLIMIT_NPROC for uid 0, and counts it per user: a fork bomb in one
sandbox must not use up the process budget of the sandboxes running beside it. So bubblewrap runs
as `SANDBOX_UID_BASE + slot`, a uid no one else has, and a slot is reused only once its sandbox ended.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

#: First uid used for sandboxes when this process is root (bubblewrap then runs as BASE + slot).
SANDBOX_UID_BASE = 1_500_000_000


class UidSlots:
    """Hands out `base + i`: an index given back earlier, else the next new one; thread-safe."""

    def __init__(self, base: int) -> None:
        self.base = base
        self._free: list[int] = []
        self._next = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[int]:
        """A uid that no other live sandbox holds, for as long as the `with` block lasts."""
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


#: The process-wide allocator: every Sandbox object draws from it, so no two live sandboxes share a uid.
UIDS = UidSlots(SANDBOX_UID_BASE)
