"""A stage in several processes: accelerate's own `accelerate launch`, on one machine or several.

One machine: the runner starts `accelerate launch` for the stage alone (DDP without a config file; DeepSpeed
or FSDP with one), under its lock; global rank 0 writes DIR/<stage>/result.json.

Several machines (`launch.num_machines > 1`, accelerate's multi-node launch, no launcher of our own): the same
`posttrain run RECIPE` starts on every machine, each with its `launch.machine_rank`, the run folder on a
file system they share. Machine 0 is the run: it holds the lock, runs the other stages and writes every
record. When it reaches a multi-machine stage it launches its processes and leaves a note,
DIR/<stage>/launch.json, for as long as they run. Each other machine only *follows*: for each
multi-machine stage it waits for that note, launches its own share of the processes (`--machine_rank`),
whose workers work under machine 0's lock, and waits for them; accelerate's rendezvous at
`main_process_ip:main_process_port` joins the two halves.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from posttrain.core.errors import PosttrainError, StageError
from posttrain.core.run_folder import RESULT_FILE, write_json_atomic
from posttrain.recipe import Recipe, StageConfig
from posttrain.run.lock import HOLDER_ENV, read_holder
from posttrain.stages.base import StageResult

log = logging.getLogger("posttrain.launch.accelerate")

#: Machine 0's note that a multi-machine stage's processes run: the others join while it is there.
LAUNCH_NOTE = "launch.json"
#: The rendezvous port of a multi-machine stage when the recipe gives none (torch's usual one).
MULTI_NODE_PORT = 29500
#: Seconds between two looks at the run folder while a following machine waits.
POLL_S = 2.0


def needs_launch(stage: StageConfig) -> bool:
    """Whether the stage runs under `accelerate launch` (several processes, a DeepSpeed/FSDP config, machines)."""
    spec = stage.launch
    return spec.num_processes > 1 or spec.config_file is not None or spec.num_machines > 1


def launch_args(stage: StageConfig, machine_rank: int | None = None) -> list[str]:
    """`accelerate launch` options for the stage (on the given machine; default: the recipe's `machine_rank`)."""
    spec = stage.launch
    rank = spec.machine_rank if machine_rank is None else machine_rank
    args = ["--num_processes", str(spec.num_processes), "--num_machines", str(spec.num_machines)]
    if spec.num_machines > 1:
        args += ["--machine_rank", str(rank), "--main_process_ip", str(spec.main_process_ip),
                 "--main_process_port", str(spec.main_process_port or MULTI_NODE_PORT)]
    else:
        args += ["--main_process_port", str(spec.main_process_port or free_port())]
    if spec.config_file:
        args += ["--config_file", spec.config_file]
    else:
        # Several processes: torchrun under the hood (without CUDA, accelerate falls back to gloo on the CPU).
        # One (a stage confined to the GPUs a rollout server leaves): a plain process; accelerate refuses
        # --multi_gpu for it.
        if spec.num_processes > 1:
            args.append("--multi_gpu")
        args += ["--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process",
                 str(max(1, (os.cpu_count() or 1) // spec.processes_per_machine))]
    return args


def run_launched(stage: StageConfig, run_dir: Path, lock_fd: int, env: dict[str, str] | None = None) -> StageResult:
    """Run one stage with `accelerate launch`, under this run's lock (machine 0 of a multi-machine stage);
    `env` is added to the processes' environment (e.g. the GPUs they may use)."""
    result_file = run_dir / stage.name / RESULT_FILE
    result_file.unlink(missing_ok=True)
    cmd = _command(stage, run_dir)
    shown = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    log.info("  launching %d processes: %s%s", stage.launch.num_processes, f"{shown} " if shown else "",
             " ".join(cmd[2:]))
    full_env = _launch_env(stage, os.getpid(), env)
    note = run_dir / stage.name / LAUNCH_NOTE
    if stage.launch.num_machines > 1:
        write_json_atomic(note, {"stage": stage.name, "machines": stage.launch.num_machines, "started": time.time()})
    try:
        # The launcher inherits the locked file: the folder stays locked while it runs, even if we are killed.
        code = _wait(subprocess.Popen(cmd, start_new_session=True, env=full_env, pass_fds=(lock_fd,)))
    finally:
        note.unlink(missing_ok=True)
    if code != 0 or not result_file.exists():
        raise StageError(f"stage {stage.name!r}: launched processes exited with code {code} (see the log above)")
    data = json.loads(result_file.read_text())
    return StageResult(metrics=data.get("metrics", {}), outputs=data.get("outputs", {}))


def follower_rank(recipe: Recipe, only: list[str] | None) -> int:
    """This machine's rank for the selected multi-machine stages: 0 (it runs the recipe) or > 0 (it follows)."""
    ranks = {s.launch.machine_rank for s in recipe.stages
             if s.launch.num_machines > 1 and (not only or s.name in only)}
    if len(ranks) > 1:
        raise PosttrainError(f"the multi-machine stages give this machine different ranks ({sorted(ranks)}): "
                             "set launch.machine_rank alike for all of them (--set stages.NAME.launch.machine_rank=R)")
    return ranks.pop() if ranks else 0


def follow(recipe: Recipe, only: list[str] | None) -> int:
    """Machine `machine_rank` > 0: join each selected multi-machine stage when machine 0 launches it; 0 when
    every launch ended well. Nothing else runs here and nothing is written to the run folder."""
    run_dir = Path(recipe.output_dir)
    stages = [s for s in recipe.stages if s.launch.num_machines > 1 and (not only or s.name in only)]
    for stage in stages:
        holder = _await_launch(run_dir, stage)
        if holder is None:
            log.error("machine 0's run ended before it launched stage %s", stage.name)
            return 1
        cmd = _command(stage, run_dir)
        log.info("stage %s: joining machine 0's launch as machine %d: %s", stage.name, stage.launch.machine_rank,
                 " ".join(cmd[2:]))
        code = _wait(subprocess.Popen(cmd, start_new_session=True, env=_launch_env(stage, holder)))
        if code != 0:
            log.error("stage %s: this machine's processes exited with code %d", stage.name, code)
            return 1
        while (run_dir / stage.name / LAUNCH_NOTE).exists():  # machine 0's launch is still winding down
            time.sleep(POLL_S)
        log.info("stage %s: done on this machine", stage.name)
    return 0


def _await_launch(run_dir: Path, stage: StageConfig) -> int | None:
    """Wait for machine 0 to launch `stage`; its run's PID (the lock holder), or None when that run ended first."""
    note = run_dir / stage.name / LAUNCH_NOTE
    seen_run = False
    told = False
    while True:
        holder = read_holder(run_dir)
        if holder is not None:
            seen_run = True
            if note.exists():
                return holder.pid
        elif seen_run:
            return None
        if not told:
            log.info("stage %s: waiting for machine 0 to launch it (%s)", stage.name, note)
            told = True
        time.sleep(POLL_S)


def _launch_env(stage: StageConfig, holder: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The launched processes' environment: `extra` on top of ours, the PID of the run whose lock they work
    under, and CPU ranks where there is no CUDA."""
    env = {**os.environ, **(extra or {}), HOLDER_ENV: str(holder)}
    if not stage.launch.config_file and not _has_cuda():
        env["ACCELERATE_USE_CPU"] = "true"  # torchrun ranks + gloo; without it every rank thinks it is alone
    return env


def _command(stage: StageConfig, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *launch_args(stage), "-m", "posttrain.launch.worker",
            str(run_dir), stage.name]


def _wait(proc: subprocess.Popen[Any]) -> int:
    try:
        return proc.wait()
    except KeyboardInterrupt:
        terminate(proc)
        raise


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def terminate(proc: subprocess.Popen[Any], grace_s: float = 30) -> None:
    """Stop a process group started with `start_new_session`: SIGTERM, then SIGKILL if it is not gone in time."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
