"""Run a recipe's stages in order: hash each resolved stage, skip what is done, resume what is not.

Per stage, `DIR/<name>/stage.json` records the config hash and status. A rerun with an unchanged
config skips finished stages; a stage that was interrupted runs again and resumes from its own
rows/checkpoints; a stage whose config changed starts afresh, its old folder moved to
`DIR/<name>.prev/` (never deleted silently).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from posttrain.core.errors import PosttrainError, StageError
from posttrain.recipe import Recipe, StageConfig
from posttrain.run_folder import RESOLVED_RECIPE, RESULT_FILE, ReportEntry, RunReport, StageState, prev_dir
from posttrain.stages import KINDS
from posttrain.stages.base import StageContext, StageResult
from posttrain.tracking import check_installed, log_final_metrics, names

log = logging.getLogger("posttrain.runner")


def run_recipe(recipe: Recipe, only: list[str] | None = None) -> dict[str, Any]:
    """Run (or skip) the recipe's stages; write resolved_recipe.yaml and the report. Returns report.json."""
    from posttrain.tiny import materialize_base

    run_dir = Path(recipe.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if only:
        unknown = sorted(set(only) - set(recipe.stage_names()))
        if unknown:
            raise PosttrainError(f"--stages: no stage named {', '.join(unknown)} "
                                 f"(stages: {', '.join(recipe.stage_names())})")
    check_installed([*recipe.report_to, *(t for s in recipe.stages for t in names(s.trl.get("report_to")))])
    (run_dir / RESOLVED_RECIPE).write_text(recipe.to_yaml())

    report = RunReport.read(run_dir)
    base_model, base_hash = materialize_base(recipe, run_dir)
    hashes: dict[str, str] = {}
    interrupted: BaseException | None = None
    failed = False
    total = len(recipe.stages)
    try:
        for i, stage in enumerate(recipe.stages, 1):
            digest = stage_hash(recipe, stage, base_hash, hashes)
            hashes[stage.name] = digest
            if only and stage.name not in only:
                state = StageState.read(run_dir / stage.name)
                if state and state.config_hash == digest and state.status == "done":
                    report.stages[stage.name] = _entry(stage, "skipped", 0.0, state.metrics)
                continue
            if failed:
                log.warning("stage %d/%d %s: not run, an earlier stage failed", i, total, stage.name)
                continue
            log.info("stage %d/%d %s (%s)", i, total, stage.name, stage.kind)
            entry = _run_stage(recipe, stage, run_dir, base_model, digest)
            report.stages[stage.name] = entry
            _write_report(run_dir, recipe, report)
            failed = entry.status == "failed"
    except KeyboardInterrupt as exc:
        interrupted = exc
    finally:
        _write_report(run_dir, recipe, report)
        log_final_metrics(recipe, report)
    if interrupted is not None:
        raise interrupted
    return report.to_json()


def stage_hash(recipe: Recipe, stage: StageConfig, base_hash: str, earlier: dict[str, str]) -> str:
    """Hash of everything that determines a stage's output: its config, the seed, the base model, and the
    hashes of the earlier stages it mentions."""
    config = stage.model_dump(mode="json")
    deps = {name: digest for name, digest in earlier.items() if name in set(_strings(config))}
    payload = {"stage": config, "seed": recipe.seed, "base": base_hash, "deps": deps}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _run_stage(recipe: Recipe, stage: StageConfig, run_dir: Path, base_model: str, digest: str) -> ReportEntry:
    stage_dir = run_dir / stage.name
    state = StageState.read(stage_dir)
    if state and state.config_hash == digest and state.status == "done":
        log.info("  skipped: finished earlier with the same config (%s)", digest)
        return _entry(stage, "skipped", 0.0, state.metrics)
    if state and state.config_hash != digest and stage_dir.exists():
        prev = prev_dir(run_dir, stage.name)
        shutil.rmtree(prev, ignore_errors=True)
        stage_dir.rename(prev)
        log.warning("  config changed since the last run: starting %s afresh (old outputs kept in %s)",
                     stage.name, prev)
    elif state:
        log.info("  resuming: an earlier run of this config did not finish")

    StageState(stage.kind, digest, "running").write(stage_dir)
    start = time.perf_counter()
    try:
        if stage.launch.num_processes > 1:
            result = _run_launched(stage, run_dir)
        else:
            ctx = StageContext(recipe, stage, run_dir, base_model, logging.getLogger(f"posttrain.{stage.name}"))
            result = KINDS.get(stage.kind).run(ctx)
    except KeyboardInterrupt:
        seconds = time.perf_counter() - start
        StageState(stage.kind, digest, "interrupted", seconds).write(stage_dir)
        log.warning("  interrupted after %.1fs: run the same command again to resume", seconds)
        raise
    except PosttrainError as exc:
        return _failed(stage, stage_dir, digest, start, str(exc))
    except Exception as exc:
        log.exception("  stage %s crashed", stage.name)
        return _failed(stage, stage_dir, digest, start, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    StageState(stage.kind, digest, "done", seconds, result.metrics, result.outputs).write(stage_dir)
    log.info("  done in %.1fs%s", seconds, _summary(result.metrics))
    return _entry(stage, "done", seconds, result.metrics)


def _failed(stage: StageConfig, stage_dir: Path, digest: str, start: float, error: str) -> ReportEntry:
    seconds = time.perf_counter() - start
    StageState(stage.kind, digest, "failed", seconds, error=error).write(stage_dir)
    log.error("  stage %s failed: %s", stage.name, error)
    return _entry(stage, "failed", seconds, {"error": error})


def _run_launched(stage: StageConfig, run_dir: Path) -> StageResult:
    """Run one stage in N processes with `accelerate launch`; rank 0 writes the result."""
    result_file = run_dir / stage.name / RESULT_FILE
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args(stage),
           "-m", "posttrain.worker", str(run_dir), stage.name]
    log.info("  launching %d processes: %s", stage.launch.num_processes, " ".join(cmd[2:]))
    env = dict(os.environ)
    if not stage.launch.config_file and not _has_cuda():
        env["ACCELERATE_USE_CPU"] = "true"  # torchrun ranks + gloo; without it every rank thinks it is alone
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        _terminate(proc)
        raise
    if code != 0 or not result_file.exists():
        raise StageError(f"stage {stage.name!r}: launched processes exited with code {code} (see the log above)")
    data = json.loads(result_file.read_text())
    return StageResult(metrics=data.get("metrics", {}), outputs=data.get("outputs", {}))


def launch_args(stage: StageConfig) -> list[str]:
    spec = stage.launch
    args = ["--num_processes", str(spec.num_processes), "--num_machines", "1",
            "--main_process_port", str(spec.main_process_port or _free_port())]
    if spec.config_file:
        args += ["--config_file", spec.config_file]
    else:
        # torchrun under the hood; without CUDA, accelerate falls back to gloo on the CPU.
        args += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
                 "--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // spec.num_processes))]
    return args


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _terminate(proc: subprocess.Popen[Any]) -> None:
    """Stop a launched process group: SIGTERM, then SIGKILL if it does not go within 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(stage: StageConfig, status: Any, seconds: float, metrics: dict[str, Any]) -> ReportEntry:
    return ReportEntry(stage.kind, status, round(seconds, 2), metrics)


def _summary(metrics: dict[str, Any]) -> str:
    shown = [f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return (": " + ", ".join(shown[:6])) if shown else ""


def _write_report(run_dir: Path, recipe: Recipe, report: RunReport) -> None:
    report.write(run_dir, recipe.stage_names())
    try:
        from posttrain.report import write_report

        write_report(run_dir, kinds=KINDS)
    except Exception:  # the report is a view; never lose a run over it
        log.exception("could not write report.md / plots")


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
