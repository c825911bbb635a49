"""The uid allocator: no two live sandboxes share a uid; a uid is reused only once its sandbox ended."""

from __future__ import annotations

import multiprocessing
import os
import threading
from contextlib import ExitStack

import pytest

from rewards.sandbox.uids import SANDBOX_UID_BASE, SANDBOX_UID_END, UIDS, UidSlots, process_base


def test_live_slots_are_distinct_and_freed_ones_reused() -> None:
    slots = UidSlots(5000)
    with slots.slot() as a, slots.slot() as b:
        assert (a, b) == (5000, 5001)
        with slots.slot() as c:
            assert c == 5002
    with slots.slot() as again:
        assert again in (5000, 5001, 5002)  # nothing new while a freed one is there
    with ExitStack() as stack:
        held = [stack.enter_context(slots.slot()) for _ in range(4)]
    assert sorted(held) == [5000, 5001, 5002, 5003]


def test_a_slot_is_freed_when_its_block_fails() -> None:
    slots = UidSlots(0)
    try:
        with slots.slot():
            raise RuntimeError("the sandbox did not start")
    except RuntimeError:
        pass
    with slots.slot() as uid:
        assert uid == 0


def test_concurrent_threads_never_share_a_uid() -> None:
    slots = UidSlots(100)
    live: set[int] = set()
    clashes: list[int] = []
    lock = threading.Lock()

    def hold() -> None:
        for _ in range(200):
            with slots.slot() as uid:
                with lock:
                    if uid in live:
                        clashes.append(uid)
                    live.add(uid)
                with lock:
                    live.discard(uid)

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clashes == []
    with ExitStack() as stack:
        assert max(stack.enter_context(slots.slot()) for _ in range(8)) < 108  # no more slots than threads


def test_the_process_wide_allocator_uses_a_high_unused_range() -> None:
    assert 1 << 30 <= SANDBOX_UID_BASE <= UIDS.base < SANDBOX_UID_END < 1 << 31  # far from real users, below 2**31
    assert UIDS.base == process_base(os.getpid())


def _first_uid(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with UIDS.slot() as uid:
        queue.put((os.getpid(), uid))


def test_two_processes_draw_distinct_uids_even_after_a_fork() -> None:
    """Two GRPO processes (or a forked worker and its parent) each start at their first slot: the uids differ."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with UIDS.slot() as mine:
        child = ctx.Process(target=_first_uid, args=(queue,))
        child.start()
        pid, theirs = queue.get(timeout=30)
        child.join(30)
    assert pid != os.getpid() and theirs == process_base(pid) and theirs != mine


def test_a_process_holds_at_most_its_block() -> None:
    slots = UidSlots(0, span=2)
    with slots.slot(), slots.slot(), pytest.raises(RuntimeError, match="more than 2 sandboxes"), slots.slot():
        pass
