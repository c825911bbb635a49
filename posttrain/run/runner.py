"""Run a recipe's stages in order: identify each stage, skip what is current, resume what is not.

A stage's identity is the hash of its config, the seed, the base model, the outputs of the earlier
stages it reads (each stage's finished outputs carry a stamp) and the local files it reads (size
and mtime). `DIR/<name>/stage.json` records the identity its folder was made with and how far it
got. A rerun skips a stage only when its recorded identity is the current one, it finished, and
the outputs its kind requires are there; it resumes a stage of the same identity that did not
finish; and it starts afresh when the identity changed, keeping the old folder as
`DIR/<name>.prev/` (the last finished run) or `DIR/<name>.unfinished/` (an attempt that did not
finish, or a folder without stage.json). A backup whose identity is the current one is restored
instead of recomputed. `--stages` runs only the named stages; a stage left out whose outputs are
stale is reported as not run, never as skipped. The whole run holds DIR's lock (run_lock.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from posttrain.core.errors import PosttrainError, RunFolderError
from posttrain.core.run_folder import (
    PREV_SUFFIX,
    RESOLVED_RECIPE,
    REUSE_FILE,
    TMP_SUFFIX,
    UNFINISHED_SUFFIX,
    ReportEntry,
    RunReport,
    StageState,
    prepare_run_dir,
    replace_dir,
    user_os_error,
    write_json_atomic,
    write_text_atomic,
)
from posttrain.launch.accelerate import needs_launch, run_launched
from posttrain.launch.rollout import rollout_server_for
from posttrain.recipe import IDENTITY, Recipe, StageConfig
from posttrain.run.lock import run_lock
from posttrain.stages import KINDS
from posttrain.stages.base import StageContext
from posttrain.training.tracking import check_installed, log_final_metrics
from posttrain.training.tracking import names as tracker_names

log = logging.getLogger("posttrain.run.runner")


def run_recipe(recipe: Recipe, only: list[str] | None = None) -> dict[str, Any]:
    """Run (or skip) the recipe's stages under DIR's lock; write resolved_recipe.yaml and the report.
    Returns report.json."""
    if only:
        unknown = sorted(set(only) - set(recipe.stage_names()))
        if unknown:
            raise PosttrainError(f"--stages: no stage named {', '.join(unknown)} "
                                 f"(stages: {', '.join(recipe.stage_names())})")
    check_installed([*recipe.report_to, *(t for s in recipe.stages for t in tracker_names(s.trl.get("report_to")))])
    run_dir = Path(recipe.output_dir)
    prepare_run_dir(run_dir)
    try:
        with run_lock(run_dir) as lock_fd:
            return _run_locked(recipe, run_dir, only, lock_fd)
    except OSError as exc:
        raise RunFolderError(user_os_error(exc, run_dir) or f"{run_dir}: {exc}") from None


def _run_locked(recipe: Recipe, run_dir: Path, only: list[str] | None, lock_fd: int) -> dict[str, Any]:
    from posttrain.run.base_model import materialize_base

    write_text_atomic(run_dir / RESOLVED_RECIPE, recipe.to_yaml())
    report = RunReport.read(run_dir)
    base_model, base_hash = materialize_base(recipe, run_dir)
    stamps: dict[str, str] = {}  # stage -> stamp of its outputs, for stages whose outputs are current
    stop: BaseException | None = None  # Ctrl-C, or a folder problem: later stages are classified, not run
    failed = False
    total = len(recipe.stages)
    try:
        for i, stage in enumerate(recipe.stages, 1):
            identity = stage_hash(recipe, stage, base_hash, stamps)
            active = (not only or stage.name in only) and not failed and stop is None
            stage_dir = run_dir / stage.name
            if active:
                _restore_backup(run_dir, stage, identity)
            state = StageState.read(stage_dir)
            missing = missing_outputs(stage, stage_dir)
            if state is not None and state.config_hash == identity and state.status == "done" and not missing:
                stamps[stage.name] = state.stamp()
                report.stages[stage.name] = _entry(stage, "skipped", 0.0, state.metrics)
                if active:
                    log.info("stage %d/%d %s: skipped (finished earlier with this config and these inputs)", i,
                             total, stage.name)
                continue
            if not active:
                report.stages.pop(stage.name, None)  # never shown as done or skipped with results not current
                if state is not None and stop is None:
                    why = "an earlier stage failed" if failed else "--stages left it out"
                    log.warning("stage %d/%d %s: not run (%s), and its outputs are not current: its config, its "
                                "inputs or its outputs changed since they were made", i, total, stage.name, why)
                continue
            log.info("stage %d/%d %s (%s)", i, total, stage.name, stage.kind)
            if state is not None and state.config_hash == identity and state.status == "done":
                log.warning("  finished earlier, but %s is missing: running it again", ", ".join(missing))
            stale = [d for d in stage_dependencies(recipe, stage) if d not in stamps]
            if stale:  # its folder is left as it is: nothing ran
                error = (f"it reads the outputs of stage(s) {', '.join(stale)}, which have not finished with their "
                         f"current config and inputs: run them too (--stages {','.join([*stale, stage.name])})")
                log.error("  stage %s not run: %s", stage.name, error)
                entry = _entry(stage, "failed", 0.0, {"error": error})
            else:
                try:
                    work = (stage_hash(recipe, stage, base_hash, stamps, without=stage.selection_fields)
                            if stage.reusable_outputs else None)
                    entry, stamp = _run_stage(recipe, stage, run_dir, base_model, identity, lock_fd, work)
                except (KeyboardInterrupt, RunFolderError) as exc:
                    stop = exc
                    report.stages.pop(stage.name, None)
                    continue
                if stamp is not None:
                    stamps[stage.name] = stamp
            report.stages[stage.name] = entry
            _write_report(run_dir, recipe, report, plots=False)  # plots once, below: they cost seconds per build
            failed = entry.status == "failed"
    except BaseException:
        _finish(run_dir, recipe, report, quietly=True)
        raise
    _finish(run_dir, recipe, report, quietly=stop is not None)
    if stop is not None:
        raise stop
    return report.to_json()


def _finish(run_dir: Path, recipe: Recipe, report: RunReport, quietly: bool) -> None:
    """The whole report (plots too) and the trackers' final metrics; `quietly` while another error is on its way
    to the user (then neither may replace it)."""
    for action in (lambda: _write_report(run_dir, recipe, report), lambda: log_final_metrics(recipe, report)):
        if quietly:
            _try(action)
        else:
            action()


# --------------------------------------------------------------------------------------------------
# Identity


def stage_hash(recipe: Recipe, stage: StageConfig, base_hash: str, earlier: dict[str, str],
               without: tuple[str, ...] = ()) -> str:
    """A stage's identity: its config, the seed, the base model, the stamps of the earlier stages' outputs it
    reads (`earlier`: stage -> stamp; a stage missing there has no current outputs) and the local files it reads.
    `without`: config options left out (what a folder's reusable outputs do not depend on)."""
    config = stage.model_dump(mode="json", context={IDENTITY: True}, exclude=set(without) or None)
    deps = {name: earlier.get(name) for name in stage_dependencies(recipe, stage)}
    run_dir = Path(recipe.output_dir).absolute()
    base = recipe.model_dump(mode="json", include={"model", "tokenizer"})
    base_files = {p: file_identity(Path(p), run_dir) for p in _local_paths(base)}
    files = {p: file_identity(Path(p), run_dir) for p in _local_paths(config, set(recipe.stage_names()))}
    payload = {"stage": config, "seed": recipe.seed, "base": base_hash, "deps": deps, "files": files,
               "base_files": base_files}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def stage_dependencies(recipe: Recipe, stage: StageConfig) -> list[str]:
    """The earlier stages whose outputs `stage` reads: every earlier stage it names in its options."""
    names = recipe.stage_names()
    earlier = set(names[:names.index(stage.name)])
    mentioned = set(_strings(stage.model_dump(mode="json")))
    return [n for n in names if n in earlier and n in mentioned]


def file_identity(path: Path, run_dir: Path | None = None, limit: int = 10_000) -> Any:
    """Size and mtime of a file, or a digest of those of a folder's files (at most `limit` of them; none of the
    run folder's own, which change as the run goes)."""
    try:
        if path.is_file():
            st = path.stat()
            return [st.st_size, st.st_mtime_ns]
        digest = hashlib.sha256()
        files = (p for p in path.rglob("*") if p.is_file() and (run_dir is None or not p.is_relative_to(run_dir)))
        for n, sub in enumerate(sorted(files)):
            if n >= limit:
                break
            st = sub.stat()
            digest.update(f"{sub.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]
    except OSError:
        return None


def missing_outputs(stage: StageConfig, stage_dir: Path) -> list[str]:
    """The outputs the stage's kind requires that are not in its folder."""
    return [name for name in stage.expected_outputs() if not (stage_dir / name).exists()]


def _local_paths(config: Any, stages: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Strings in a config that name an existing local file or folder."""
    out = set()
    for s in _strings(config):
        if s in stages or "\n" in s or len(s) > 4096 or not (os.sep in s or s.startswith("~")):
            continue
        path = Path(s).expanduser()
        try:
            if path.exists():
                out.add(str(path))
        except OSError:
            continue
    return sorted(out)


def _strings(obj: Any) -> Iterator[str]:
    """Every string value, except the names of things (`name`, `kind`), which are not references."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("name", "kind"):
                yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


# --------------------------------------------------------------------------------------------------
# One stage


def _run_stage(recipe: Recipe, stage: StageConfig, run_dir: Path, base_model: str, identity: str,
               lock_fd: int, work: str | None = None) -> tuple[ReportEntry, str | None]:
    """`work`: the identity without the stage's selection options, for a kind with reusable outputs."""
    stage_dir = run_dir / stage.name
    state = StageState.read(stage_dir)
    if state is not None and state.config_hash == identity:
        if state.status != "done":
            log.info("  resuming: an earlier run of this config and these inputs did not finish (%s)", state.status)
    else:
        _set_aside(run_dir, stage, state)
        if work is not None:
            _reuse_outputs(run_dir, stage, work)

    StageState(stage.kind, identity, "running").write(stage_dir)
    if work is not None:
        write_json_atomic(stage_dir / REUSE_FILE, {"identity": work})
    start = time.perf_counter()
    try:
        with rollout_server_for(recipe, stage, run_dir) as env:
            if needs_launch(stage) or env:  # a stage confined to some GPUs needs a process of its own
                result = run_launched(stage, run_dir, lock_fd, env)
            else:
                ctx = StageContext(recipe, stage, run_dir, base_model, logging.getLogger(f"posttrain.{stage.name}"))
                try:
                    result = KINDS.get(stage.kind).run(ctx)
                finally:
                    _free_gpu_memory()
    except KeyboardInterrupt:
        seconds = time.perf_counter() - start
        StageState(stage.kind, identity, "interrupted", seconds).write(stage_dir)
        log.warning("  interrupted after %.1fs: run the same command again to resume", seconds)
        raise
    except PosttrainError as exc:
        return _failed(stage, stage_dir, identity, start, str(exc)), None
    except Exception as exc:
        message = user_os_error(exc, stage_dir)
        if message is not None:  # disk full, read-only, ...: nothing the stage did wrong; stop, resumable
            _try(lambda: StageState(stage.kind, identity, "interrupted", time.perf_counter() - start,
                                    error=message).write(stage_dir))
            raise RunFolderError(f"{message} (stage {stage.name!r}: fix that, then run the same command again "
                                 "to resume)") from None
        log.exception("  stage %s crashed", stage.name)
        return _failed(stage, stage_dir, identity, start, f"{type(exc).__name__}: {exc}"), None
    seconds = time.perf_counter() - start
    missing = missing_outputs(stage, stage_dir)
    if missing:
        return _failed(stage, stage_dir, identity, start, f"finished without writing {', '.join(missing)}"), None
    done = StageState(stage.kind, identity, "done", seconds, result.metrics, result.outputs,
                      finished=f"{time.time_ns()}")
    done.write(stage_dir)
    log.info("  done in %.1fs%s", seconds, _summary(result.metrics))
    return _entry(stage, "done", seconds, result.metrics), done.stamp()


def _set_aside(run_dir: Path, stage: StageConfig, state: StageState | None) -> None:
    """Move a stage folder made with another identity out of the way: a finished one becomes `<name>.prev/`
    (replacing the older backup), anything else `<name>.unfinished/` (so a failed attempt never costs the last
    finished outputs)."""
    stage_dir = run_dir / stage.name
    if not stage_dir.is_dir() or not any(stage_dir.iterdir()):
        return
    if state is not None and state.status == "done":
        backup = run_dir / (stage.name + PREV_SUFFIX)
        why = "its config or inputs changed since it finished"
    else:
        backup = run_dir / (stage.name + UNFINISHED_SUFFIX)
        why = ("its folder has no stage.json, so what is in it was made with an unknown config" if state is None
               else f"an attempt with another config or other inputs did not finish ({state.status})")
    replace_dir(stage_dir, backup)
    log.warning("  starting %s afresh: %s; the old folder is kept as %s", stage.name, why, backup)


def _reuse_outputs(run_dir: Path, stage: StageConfig, work: str) -> None:
    """Start a fresh folder with the reusable outputs of a folder set aside that differs only in selection options
    (copies: the backup stays whole, to be restored if the options change back)."""
    for suffix in (PREV_SUFFIX, UNFINISHED_SUFFIX):
        backup = run_dir / (stage.name + suffix)
        try:
            same = json.loads((backup / REUSE_FILE).read_text()).get("identity") == work
        except (OSError, ValueError, AttributeError):
            continue
        files = [name for name in stage.reusable_outputs if (backup / name).is_file()]
        if not same or not files:
            continue
        stage_dir = run_dir / stage.name
        stage_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copy2(backup / name, stage_dir / name)
        log.info("  reusing %s from %s: only %s changed", ", ".join(files), backup, ", ".join(stage.selection_fields))
        return


def _restore_backup(run_dir: Path, stage: StageConfig, identity: str) -> None:
    """Bring back a backup made with this very identity (a reverted config change) instead of recomputing it."""
    stage_dir = run_dir / stage.name
    moving = run_dir / (stage.name + ".restore" + TMP_SUFFIX)
    if moving.is_dir() and not stage_dir.exists():  # a restore cut off between its renames
        moving.rename(stage_dir)
    current = StageState.read(stage_dir)
    if current is not None and current.config_hash == identity:
        return
    for suffix in (PREV_SUFFIX, UNFINISHED_SUFFIX):
        backup = run_dir / (stage.name + suffix)
        state = StageState.read(backup)
        if state is None or state.config_hash != identity:
            continue
        if state.status == "done" and missing_outputs(stage, backup):
            continue
        backup.rename(moving)
        _set_aside(run_dir, stage, current)
        moving.rename(stage_dir)
        log.info("stage %s: restored from %s, which holds a %s run of this config and these inputs", stage.name,
                 backup, "finished" if state.status == "done" else "resumable")
        return


def _failed(stage: StageConfig, stage_dir: Path, identity: str, start: float, error: str) -> ReportEntry:
    seconds = time.perf_counter() - start
    StageState(stage.kind, identity, "failed", seconds, error=error).write(stage_dir)
    log.error("  stage %s failed: %s", stage.name, error)
    return _entry(stage, "failed", seconds, {"error": error})


def _free_gpu_memory() -> None:
    """After a stage in this process: what it held on the GPU (a vLLM engine, a model) goes before the next one."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _try(action: Any) -> None:
    """Best effort, while another error is on its way to the user."""
    with contextlib.suppress(Exception):
        action()


# --------------------------------------------------------------------------------------------------
# Report


def _entry(stage: StageConfig, status: Any, seconds: float, metrics: dict[str, Any]) -> ReportEntry:
    return ReportEntry(stage.kind, status, round(seconds, 2), metrics)


def _summary(metrics: dict[str, Any]) -> str:
    shown = [f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return (": " + ", ".join(shown[:6])) if shown else ""


def _write_report(run_dir: Path, recipe: Recipe, report: RunReport, plots: bool = True) -> None:
    """report.json, and report.md with its plots (`plots`: when the run ends, fails or is interrupted) or without
    them (after each stage: drawing every plot again took most of a tiny run's time)."""
    report.write(run_dir, recipe.stage_names())
    try:
        from posttrain.report import write_report

        write_report(run_dir, kinds=KINDS, plots=plots)
    except Exception as exc:  # the report is a view; never lose a run over it
        message = user_os_error(exc, run_dir)
        if message is not None:
            log.warning("could not write report.md / plots: %s", message)
        else:
            log.exception("could not write report.md / plots")
