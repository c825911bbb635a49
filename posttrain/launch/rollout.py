"""The rollout server of a stage in vLLM server mode (GRPO's `rollout:`), as `posttrain run` handles it.

`rollout: {backend: vllm, mode: server, start: true, gpus: [0]}`: the run starts `posttrain rollout-server` for
the stage as a child process on those GPUs (CUDA_VISIBLE_DEVICES; its output in DIR/<stage>/rollout_server.log),
waits until its health endpoint answers (`GET /health`, what TRL's client polls), runs the stage on the
machine's other GPUs, and stops the server afterwards, also when the stage fails or is interrupted. A server
that exits before it answers fails the stage with the end of its log; a port something else already answers
on (a teacher's `vllm serve`, a server left running) fails it before anything starts.

Without `start`, the server is yours to start: the run waits for it (TRL's `vllm_server_timeout` under the
stage's `trl:`, 240 s by default) and, when nothing answers, fails the stage with the command line to run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from posttrain.core.errors import StageError
from posttrain.core.run_folder import RESOLVED_RECIPE
from posttrain.launch.accelerate import terminate
from posttrain.recipe import Recipe, StageConfig

log = logging.getLogger("posttrain.rollout")

#: The started server's output, in the stage's folder.
SERVER_LOG = "rollout_server.log"
#: TRL's default for how long its client waits for the server (`GRPOConfig.vllm_server_timeout`).
DEFAULT_WAIT_S = 240.0
#: Seconds between two health checks.
POLL_S = 1.0


def uses_server(stage: StageConfig) -> bool:
    """Whether the stage generates through a vLLM rollout server (the choice `grpo._rollout_args` makes)."""
    spec = getattr(stage, "rollout", None)
    if spec is None or spec.mode != "server" or spec.backend == "transformers":
        return False
    return spec.backend == "vllm" or (importlib.util.find_spec("vllm") is not None and _gpu_count() > 0)


@contextlib.contextmanager
def rollout_server_for(recipe: Recipe, stage: StageConfig, run_dir: Path,
                       command: list[str] | None = None) -> Iterator[dict[str, str]]:
    """For a stage in server mode: the server up while the stage runs (started here when `start`), and the
    environment the stage's processes need (the GPUs left to them); `{}` for every other stage.

    `command` replaces `posttrain rollout-server` (what is started; the tests start a stand-in without vLLM)."""
    if not uses_server(stage):
        yield {}
        return
    spec = stage.rollout  # type: ignore[attr-defined]
    url = f"http://{_connect_host(spec.server_host)}:{spec.server_port}/health"
    wait_s = float(stage.trl.get("vllm_server_timeout", DEFAULT_WAIT_S))
    command = command or server_command(stage, run_dir)
    if not spec.start:
        visible = visible_gpus()
        gpus = [visible[i] if i < len(visible) else str(i) for i in spec.gpus]
        shown = f"CUDA_VISIBLE_DEVICES={','.join(gpus)} {shlex.join(command)}"
        log.info("  waiting up to %gs for the rollout server at %s (start it with: %s)", wait_s, url, shown)
        if _wait_healthy(url, wait_s) != "up":
            raise StageError(
                f"stage {stage.name!r}: no rollout server answers at {url} after {wait_s:g}s. Start it on a GPU the "
                f"trainer does not use, then run again:\n  {shown}\nor let `posttrain run` start and stop it: "
                f"rollout: {{start: true, gpus: [0]}} (trl.vllm_server_timeout: how long to wait)")
        yield {}
        return
    if healthy(url):
        raise StageError(f"stage {stage.name!r}: something already answers at {url} before the rollout server was "
                         "started (a teacher's `vllm serve`, a server left running?): stop it or set "
                         "rollout.server_port to a free port; a rollout server you started for this stage yourself "
                         f"needs --set stages.{stage.name}.rollout.start=false")
    server_gpus, trainer_gpus = split_gpus(spec.gpus, stage)
    stage_dir = run_dir / stage.name
    stage_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(server_gpus)}
    log.info("  starting the rollout server on GPU(s) %s: %s (log: %s)", ",".join(server_gpus),
             shlex.join(command), stage_dir / SERVER_LOG)
    with open(stage_dir / SERVER_LOG, "ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_stop_with_parent)
    try:
        _wait_started(proc, url, wait_s, stage, stage_dir / SERVER_LOG)
        log.info("  rollout server up at %s; training on GPU(s) %s", url, ",".join(trainer_gpus) or "(none)")
        yield {"CUDA_VISIBLE_DEVICES": ",".join(trainer_gpus)}
    finally:
        terminate(proc)
        log.info("  rollout server stopped")


def _stop_with_parent() -> None:
    """In the server's process before it starts: SIGTERM when the run dies, even by SIGKILL (Linux), so no
    server is left holding the GPUs and the port."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):  # not Linux: the run's own `finally` is all there is
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def server_command(stage: StageConfig, run_dir: Path) -> list[str]:
    """`posttrain rollout-server` for this stage of the run's resolved recipe (what the user would type)."""
    spec = stage.rollout  # type: ignore[attr-defined]
    command = [sys.executable, "-m", "posttrain.cli", "rollout-server", str(run_dir / RESOLVED_RECIPE),
               "--stage", stage.name, "--output-dir", str(run_dir)]
    if len(spec.gpus) > 1:
        command += ["--data-parallel-size", str(len(spec.gpus))]
    return command + shlex.split(spec.server_args)


def split_gpus(indices: list[int], stage: StageConfig) -> tuple[list[str], list[str]]:
    """(the server's GPUs, the trainer's): `indices` into the GPUs this machine shows, the rest for training."""
    visible = visible_gpus()
    bad = [i for i in indices if i >= len(visible)]
    if bad:
        raise StageError(f"stage {stage.name!r}: rollout.gpus {indices}: this machine shows {len(visible)} GPU(s) "
                         f"({','.join(visible) or 'none'}; CUDA_VISIBLE_DEVICES order)")
    server = [visible[i] for i in indices]
    trainer = [g for i, g in enumerate(visible) if i not in indices]
    if not trainer:
        raise StageError(f"stage {stage.name!r}: rollout.gpus takes every GPU of this machine; leave some for "
                         "training, or use rollout.mode: colocate")
    if stage.launch.processes_per_machine > len(trainer):
        raise StageError(f"stage {stage.name!r}: launch.num_processes asks for {stage.launch.processes_per_machine} "
                         f"processes per machine, but only {len(trainer)} GPU(s) are left beside the rollout server")
    return server, trainer


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or their indices)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
    return [str(i) for i in range(_gpu_count())]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_healthy(url: str, wait_s: float,
                  proc: subprocess.Popen[Any] | None = None) -> Literal["up", "timeout", "exited"]:
    """Poll `url` until it answers ("up"), `wait_s` passes ("timeout") or `proc`, the server when started here,
    exits ("exited")."""
    deadline = time.monotonic() + wait_s
    while not healthy(url):
        if proc is not None and proc.poll() is not None:
            return "exited"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(POLL_S)
    return "up"


def _wait_started(proc: subprocess.Popen[Any], url: str, wait_s: float, stage: StageConfig, log_file: Path) -> None:
    outcome = _wait_healthy(url, wait_s, proc)
    if outcome == "exited":
        raise StageError(f"stage {stage.name!r}: the rollout server exited with code {proc.returncode} before it "
                         f"answered at {url}; the end of {log_file}:\n{_tail(log_file)}")
    if outcome == "timeout":
        raise StageError(f"stage {stage.name!r}: the rollout server did not answer at {url} within {wait_s:g}s "
                         f"(trl.vllm_server_timeout); the end of {log_file}:\n{_tail(log_file)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
