"""Stop a real `posttrain run` with SIGTERM mid-stage, as a user's Ctrl-C or a cluster's preemption would."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def start_run(python: str, recipe: Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([python, "-m", "posttrain.cli", "run", str(recipe)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sigterm_once_written(proc: subprocess.Popen[str], watched: Path, lines: int, wait_s: float = 180) -> str:
    """SIGTERM once `watched` has `lines` lines; the run must stop gracefully (exit 130). Returns its stderr."""
    deadline = time.time() + wait_s
    while time.time() < deadline and (not watched.exists() or len(watched.read_text().splitlines()) < lines):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=wait_s)
    assert proc.returncode == 130, err[-3000:]
    return err


def last_checkpoint(stage_dir: Path) -> tuple[Path, int]:
    """The newest checkpoint a graceful stop left, and its step."""
    steps = {int(p.name.split("-")[1]): p for p in (stage_dir / "checkpoints").glob("checkpoint-*")}
    assert steps, "the graceful stop should have saved a checkpoint"
    step = max(steps)
    return steps[step], step
