"""The run folder `DIR/`: every name posttrain writes there, and the typed records it keeps in them.

The runner, the stages and the report all read and write this folder; they take its names and
records from here, so a file is renamed in one place and a record has one shape:

    DIR/resolved_recipe.yaml  report.json  report.md  plots/  posttrain.log  base_model/  runs/ (trackers)
    DIR/<stage>/stage.json    the stage's state (`StageState`)
    DIR/<stage>/model/        a trained model (trainer stages), adapter/ (LoRA), checkpoints/, runs/ (trackers)
    DIR/<stage>/metrics.jsonl one flat JSON line per logging step (keys below)
    DIR/<stage>/data.jsonl, pairs.jsonl, prompts.jsonl, eval.jsonl, stats.json (distill),
                samples.jsonl (eval)
    DIR/<stage>.prev/         the outputs of the last finished run of a changed stage
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from posttrain.core.errors import DataError

# --------------------------------------------------------------------------------------------------
# Names in DIR/

RESOLVED_RECIPE = "resolved_recipe.yaml"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"
LOG_FILE = "posttrain.log"
#: A base model and tokenizer the recipe builds (tiny model, trained tokenizer).
BASE_DIR = "base_model"
#: Experiment-tracker logs (TensorBoard event files): DIR/runs/ for the run's final metrics per stage,
#: DIR/<stage>/runs/ for a trainer stage's training curves; one subfolder per invocation, `<time>_<host>`.
TRACKING_DIR = "runs"
#: Folder names under DIR that a stage may not take.
RESERVED_STAGE_NAMES = frozenset({BASE_DIR, PLOTS_DIR, TRACKING_DIR})
#: Suffix of the folder that keeps a changed stage's previous outputs.
PREV_SUFFIX = ".prev"

# Names in DIR/<stage>/
STATE_FILE = "stage.json"
#: What the ranks of a launched (multi-process) stage hand back to the runner.
RESULT_FILE = "result.json"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
DATA_FILE = "data.jsonl"
PAIRS_FILE = "pairs.jsonl"
PROMPTS_FILE = "prompts.jsonl"
EVAL_FILE = "eval.jsonl"
STATS_FILE = "stats.json"
#: distill: how far it got (byte offsets of every output), for resuming.
PROGRESS_FILE = "progress.json"
#: distill: prompts a teacher failed on after retries.
ERRORS_FILE = "errors.jsonl"
#: reward_model: judged examples that teach a generative reward model the judge format.
JUDGE_DATA_FILE = "judge_data.jsonl"
#: eval: every sampled completion with its scores.
SAMPLES_FILE = "samples.jsonl"
#: base_model/: what was built, so that an unchanged recipe reuses it.
BASE_STAMP = "posttrain_base.json"


# --------------------------------------------------------------------------------------------------
# Keys of metrics.jsonl (besides what TRL logs: loss, reward, rewards/<name>/mean, kl, ...)

STEP = "step"
LOSS = "loss"
REWARD = "reward"
MAX_VIOLATION = "moe/max_violation"
#: GRPO with dynamic sampling: zero-variance groups dropped in the logged steps.
GROUPS_DROPPED = "dynamic_sampling/groups_dropped"
#: Multi-token prediction: the MTP loss (mean over depths), depth 1's next-token accuracy on the training
#: targets, and (GRPO with speculative rollouts) the share of drafted tokens the policy accepted.
MTP_LOSS = "mtp/loss"
MTP_ACCURACY = "mtp/accuracy"
MTP_ACCEPTANCE = "mtp/acceptance"
_MAX_VIOLATION_LAYER = re.compile(r"^moe/max_violation/layer_(\d+)$")
_LOAD_LAYER = re.compile(r"^moe/load/layer_(\d+)$")
_REWARD_MEAN = re.compile(r"^rewards/(.+)/mean$")


def max_violation_key(layer: int) -> str:
    return f"{MAX_VIOLATION}/layer_{layer}"


def load_key(layer: int) -> str:
    """Per-layer expert load fractions (a list, one entry per routed expert)."""
    return f"moe/load/layer_{layer}"


def mtp_depth_key(key: str, depth: int) -> str:
    """`mtp/loss/depth_<k>`, `mtp/accuracy/depth_<k>`: per depth, logged when the model has more than one."""
    return f"{key}/depth_{depth}"


def reward_mean_key(name: str) -> str:
    """TRL logs each reward function's batch mean under this key."""
    return f"rewards/{name}/mean"


def reward_std_key(name: str) -> str:
    """TRL logs each reward function's batch standard deviation under this key."""
    return f"rewards/{name}/std"


def layer_of_max_violation_key(key: str) -> int | None:
    m = _MAX_VIOLATION_LAYER.match(key)
    return int(m.group(1)) if m else None


def layer_of_load_key(key: str) -> int | None:
    m = _LOAD_LAYER.match(key)
    return int(m.group(1)) if m else None


def reward_of_mean_key(key: str) -> str | None:
    m = _REWARD_MEAN.match(key)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------------
# Keys of an eval stage's metrics in report.json (CONTRACTS.md)

ACCURACY = "accuracy"
PASS_AT_1 = "pass@1"
#: Several sampling temperatures: the mean of their pass@1 (each is `pass@1/T=<t>`).
PASS_AT_1_MEAN = "pass@1/mean"
#: Mean tokens of the sampled completions (at the stage's sampling temperature): all, correct, wrong.
RESPONSE_LENGTH = "response_length"
RESPONSE_LENGTH_CORRECT = "response_length_correct"
RESPONSE_LENGTH_WRONG = "response_length_wrong"
#: The sampling temperature `pass@1` and the response lengths refer to; all sampled temperatures.
TEMPERATURE = "temperature"
TEMPERATURES = "temperatures"
BENCHMARK = "benchmark"


def pass_at_k_key(k: int) -> str:
    return f"pass@{k}"


def temperature_label(t: float) -> str:
    """A temperature as keys and samples.jsonl spell it: 0.6 -> "0.6", 1.0 -> "1"."""
    return f"{t:g}"


def at_temperature(key: str, t: float) -> str:
    """A figure at one sampling temperature: `pass@1/T=0.6`, `response_length/T=1`."""
    return f"{key}/T={temperature_label(t)}"


# --------------------------------------------------------------------------------------------------
# Records

Status = Literal["running", "interrupted", "done", "failed"]


@dataclass
class StageState:
    """DIR/<stage>/stage.json: what the runner knows of a stage's last attempt."""

    kind: str
    config_hash: str
    status: Status
    seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def read(cls, stage_dir: Path) -> StageState | None:
        """The stage's state, or None when it has none (never run, or the file is unreadable)."""
        try:
            raw = json.loads((stage_dir / STATE_FILE).read_text())
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def write(self, stage_dir: Path) -> None:
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stage_dir / STATE_FILE, {k: v for k, v in asdict(self).items() if v is not None})


ReportStatus = Literal["done", "skipped", "failed"]


@dataclass
class ReportEntry:
    """One stage in report.json (see CONTRACTS.md)."""

    kind: str
    status: ReportStatus
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunReport:
    """DIR/report.json: `{"stages": {NAME: ReportEntry}}`, in recipe order."""

    stages: dict[str, ReportEntry] = field(default_factory=dict)

    @classmethod
    def read(cls, run_dir: Path) -> RunReport:
        """The run's report so far; an empty one when there is none or it is unreadable."""
        try:
            raw = json.loads((run_dir / REPORT_JSON).read_text())
            entries = raw["stages"]
            return cls({name: ReportEntry(**entry) for name, entry in entries.items()})
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return cls()

    def write(self, run_dir: Path, order: list[str]) -> None:
        self.stages = {n: self.stages[n] for n in order if n in self.stages}
        write_json_atomic(run_dir / REPORT_JSON, self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {"stages": {name: asdict(entry) for name, entry in self.stages.items()}}


class DistillStats(dict[str, Any]):
    """DIR/<distill>/stats.json: `prompts`, `generated`, `kept`, `rejected` ({reason: count}) and more
    (acceptance and pass rates, the pass-rate histogram, per-teacher counts). A dict, as JSON has it."""


class EvalMetrics(dict[str, Any]):
    """An eval stage's metrics in report.json: `accuracy` (greedy), `pass@1`, optional `pass@k`, `prompts`,
    `model`, `response_length` (+ `_correct`, `_wrong`), `temperature`; with several temperatures
    `pass@1/T=<t>`, `pass@1/mean`, `temperatures`; with a preset `benchmark`. A dict, as JSON has it."""


# --------------------------------------------------------------------------------------------------
# Files


def stage_dir(run_dir: Path, name: str) -> Path:
    return run_dir / name


def prev_dir(run_dir: Path, name: str) -> Path:
    return run_dir / (name + PREV_SUFFIX)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable))
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a broken line is an error naming the file and line."""
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc})") from None
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if not isinstance(value, int | float | str | bool) else value
