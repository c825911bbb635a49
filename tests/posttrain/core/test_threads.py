"""OpenMP's passive wait policy for `posttrain` commands (posttrain/core/threads.py), in fresh interpreters."""

from __future__ import annotations

import os
import subprocess

import pytest

SCRIPT = """
import os, sys
from posttrain.cli.main import main
main([])  # the help: exit code 2, after the policy is set
import torch
print(os.environ.get("OMP_WAIT_POLICY"), file=sys.stderr)
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_line_sets_the_passive_policy_unless_the_user_chose_one(python: str, given: str | None,
                                                                            expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    proc = subprocess.run([python, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == expected


def test_too_late_once_torch_started(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401 (OpenMP started with it)

    from posttrain.core.threads import passive_wait

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert passive_wait() is False and "OMP_WAIT_POLICY" not in os.environ
