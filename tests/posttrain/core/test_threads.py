"""OpenMP's wait policy for `posttrain` commands (posttrain/core/threads.py), in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

SCRIPT = """
import os, sys
import posttrain.core.threads as threads
threads.busy_cores = lambda: float(os.environ["FAKE_BUSY"])  # the machine's other work, as the test says
from posttrain.cli.main import main
main(sys.argv[1:])  # fails on the missing recipe, after the policy is decided
import torch
print(os.environ.get("OMP_WAIT_POLICY"), file=sys.stderr)
"""


@pytest.mark.parametrize(("command", "given", "load", "expected"),
                         [("run", None, 1.5, "PASSIVE"), ("run", None, 0.3, "None"), ("run", "ACTIVE", 1.5, "ACTIVE"),
                          ("run", "PASSIVE", 0.3, "PASSIVE"), ("report", None, 1.5, "None")])
def test_commands_that_compute_set_the_passive_policy_on_a_busy_machine_unless_the_user_chose_one(
        python: str, command: str, given: str | None, load: float, expected: str) -> None:
    """`report` (and `validate`) computes nothing torch runs on threads: it does not watch the machine."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["FAKE_BUSY"] = str(load)
    if given:
        env["OMP_WAIT_POLICY"] = given
    proc = subprocess.run([python, "-c", SCRIPT, command, "no-such-folder/recipe.yaml"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == expected


def test_busy_cores_sees_a_spinning_process() -> None:
    from posttrain.core.threads import busy_cores

    idle = busy_cores(0.3)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert idle is not None and busy is not None and busy >= 0.75 and 0 <= idle <= (os.cpu_count() or 1)


def test_too_late_once_torch_started(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401 (OpenMP started with it)

    from posttrain.core.threads import passive_wait

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert passive_wait() is False and "OMP_WAIT_POLICY" not in os.environ
