"""What the report reads from a run folder, as typed views that never raise over a broken optional input.

report.json is required (without it there is no run to describe); resolved_recipe.yaml, metrics.jsonl,
stats.json and a balance baseline are optional, and a missing or broken one becomes a `problem`
sentence on its view instead of an exception. File names and metric keys come from
`posttrain.core.run_folder`, so a writer and the report cannot drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.core.errors import PosttrainError
from posttrain.core.run_folder import (
    METRICS_FILE,
    REPORT_JSON,
    RESOLVED_RECIPE,
    STATS_FILE,
    STEP,
    DistillStats,
    layer_of_load_key,
    layer_of_max_violation_key,
    stage_dir,
)

#: The status of a stage the recipe has but report.json does not (not reached, or left out by `--stages`).
NOT_RUN = "not run"

# --------------------------------------------------------------------------------------------------
# Numbers (JSON gives ints, floats, bools and strings alike; only finite ints and floats are figures)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def last_third_mean(steps: list[float], values: list[float]) -> float:
    """Mean over the last third of the steps: DeepSeek-V3 judges balancing after it has settled."""
    tail = [v for s, v in zip(steps, values, strict=True) if s > steps[-1] * 2 / 3] or values[-1:]
    return mean(tail)


# --------------------------------------------------------------------------------------------------
# metrics.jsonl


@dataclass
class MetricsLog:
    """The parsed rows of one metrics.jsonl; `problem` says why there are none (missing, unreadable)."""

    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0
    problem: str | None = None

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of the rows with a finite number under `key`, in step order."""
        steps, values = [], []
        for i, row in enumerate(self.rows):
            value = row.get(key)
            if is_number(value) and math.isfinite(value):
                step = row.get(STEP)
                steps.append(float(step) if is_number(step) else float(i))
                values.append(float(value))
        return steps, values

    def has(self, key: str) -> bool:
        return bool(self.series(key)[1])

    def all_keys(self) -> set[str]:
        return {k for row in self.rows for k in row}

    def max_violation_layers(self) -> list[tuple[int, str]]:
        """(layer, key) of every per-layer MaxVio series, by layer."""
        found = ((layer_of_max_violation_key(k), k) for k in self.all_keys())
        return sorted((layer, k) for layer, k in found if layer is not None)

    def last_loads(self) -> tuple[float | None, dict[int, list[float]]]:
        """Step and per-layer expert load fractions of the last row that logged them."""
        for row in reversed(self.rows):
            loads = {layer: v for k, v in row.items() if (layer := layer_of_load_key(k)) is not None
                     and isinstance(v, list) and v and all(map(is_number, v))}
            if loads:
                return row.get(STEP), loads
        return None, {}


def read_metrics(path: Path) -> MetricsLog:
    """A metrics.jsonl, skipping lines that are not JSON objects (a run killed mid-write leaves one)."""
    result = MetricsLog(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        result.problem = f"no {path.name}"
        return result
    except OSError as exc:
        result.problem = f"{path.name} is unreadable ({exc.strerror or exc})"
        return result
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            result.bad_lines += 1
            continue
        if isinstance(row, dict):
            result.rows.append(row)
        else:
            result.bad_lines += 1
    if not result.rows:
        result.problem = f"{path.name} has no rows"
    return result


# --------------------------------------------------------------------------------------------------
# Stages


@dataclass
class StageView:
    """One stage as the report sees it: its report.json entry (a `ReportEntry`, read leniently), its recipe
    options and its log. A stage the recipe has but report.json lacks has status `NOT_RUN`."""

    name: str
    kind: str
    status: str
    seconds: float | None
    metrics: dict[str, Any]
    config: dict[str, Any]
    run_dir: Path
    log: MetricsLog
    #: Names of all the recipe's stages (to tell a stage reference from a path).
    recipe_stages: tuple[str, ...] = ()

    @property
    def dir(self) -> Path:
        return stage_dir(self.run_dir, self.name)

    @property
    def in_report(self) -> bool:
        return self.status != NOT_RUN


def load_stages(run_dir: Path) -> list[StageView]:
    """Stages in recipe order (resolved_recipe.yaml), then any others report.json has.

    Entries are read one by one rather than through `RunReport.read`: a run killed mid-stage may leave an
    entry without a field, and the report still shows the rest of it.
    """
    try:
        report = json.loads((run_dir / REPORT_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise PosttrainError(f"{run_dir}: no readable {REPORT_JSON} ({exc}); run `posttrain run` first") from None
    entries = report.get("stages") if isinstance(report, dict) else None
    if not isinstance(entries, dict):
        raise PosttrainError(f"{run_dir / REPORT_JSON}: expected {{\"stages\": {{NAME: ...}}}}, got "
                             f"{type(entries).__name__}; rerun `posttrain run` to rewrite it")
    configs = _recipe_stages(run_dir)
    names = list(configs) + [n for n in entries if n not in configs]
    stages = []
    for name in names:
        entry = entries.get(name)
        entry = entry if isinstance(entry, dict) else {}
        config = configs.get(name, {})
        seconds = entry.get("seconds")
        metrics = entry.get("metrics")
        stages.append(StageView(
            name=name,
            kind=str(entry.get("kind") or config.get("kind") or "unknown"),
            status=str(entry.get("status") or NOT_RUN),
            seconds=float(seconds) if is_number(seconds) else None,
            metrics=metrics if isinstance(metrics, dict) else {},
            config=config,
            run_dir=run_dir,
            log=read_metrics(stage_dir(run_dir, name) / METRICS_FILE),
            recipe_stages=tuple(names),
        ))
    return stages


def _recipe_stages(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Stage options by name from resolved_recipe.yaml, in recipe order ({} when absent or unreadable)."""
    try:
        import yaml

        recipe = yaml.safe_load((run_dir / RESOLVED_RECIPE).read_text())
        stages = recipe["stages"]
        return {str(s["name"]): s for s in stages if isinstance(s, dict) and "name" in s}
    except Exception:  # optional input: order falls back to report.json's
        return {}


# --------------------------------------------------------------------------------------------------
# Other files a stage leaves


def read_stats(stage: StageView) -> tuple[DistillStats | None, str | None]:
    """A distill stage's stats.json, or None and why not."""
    try:
        stats = json.loads((stage.dir / STATS_FILE).read_text())
    except FileNotFoundError:
        return None, f"no {STATS_FILE} in {stage.dir.name}/"
    except (OSError, ValueError) as exc:
        return None, f"{STATS_FILE} is unreadable ({exc})"
    if not isinstance(stats, dict):
        return None, f"{STATS_FILE} is not a JSON object"
    return DistillStats(stats), None


def balance_baseline(stage: StageView) -> tuple[str, MetricsLog] | None:
    """The run without balancing that the stage's metrics name, as (label, log), to compare MaxVio with.

    `balance_baseline: {metrics_file: PATH, label: "γ = 0"}` (or a bare PATH), or `baseline_metrics_file: PATH`;
    a relative PATH is looked up under DIR, then under the stage's folder.
    """
    spec = stage.metrics.get("balance_baseline")
    label = stage.metrics.get("baseline_label")
    path = None
    if isinstance(spec, dict):
        path = spec.get("metrics_file")
        label = spec.get("label", label)
        if label is None and is_number(spec.get("bias_update_speed")):
            label = f"γ = {spec['bias_update_speed']:g}"
    elif isinstance(spec, str):
        path = spec
    path = path or stage.metrics.get("baseline_metrics_file")
    if not isinstance(path, str):
        return None
    candidates = [Path(path)] if Path(path).is_absolute() else [stage.run_dir / path, stage.dir / path, Path(path)]
    found = next((p for p in candidates if p.exists()), candidates[0])
    return str(label or "γ = 0 (no balancing)"), read_metrics(found)
