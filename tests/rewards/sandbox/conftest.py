"""Fixtures of the sandbox tests: one Sandbox per module, and the check that no run leaves a process behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rewards.sandbox import Sandbox
from tests.rewards.sandbox.helpers import LIMITS, PREEXISTING, descendants, marked, programs, sandbox_uid_processes


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    PREEXISTING.update(descendants())  # earlier tests' worker pools (e.g. the math reward's) may live on
    box = Sandbox(LIMITS).check()
    yield box
    box.close()
    assert set(descendants()) - PREEXISTING == set(), "a sandbox outlived close()"


@pytest.fixture
def no_leftovers(sandbox: Sandbox) -> Iterator[None]:
    """After every test: no program process under this one, no marked process, nothing of a sandbox uid.

    It starts the module's sandbox first, which records the processes that were there before (not ours).
    """
    yield
    assert programs() == [], "processes left behind by a sandbox run"
    assert marked() == [], "a background process started in the sandbox outlived the run"
    assert sandbox_uid_processes() == []
