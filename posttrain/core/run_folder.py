"""The run folder `DIR/`: every name posttrain writes there, and the typed records it keeps in them.

The runner, the stages and the report all read and write this folder; they take its names and
records from here, so a file is renamed in one place and a record has one shape:

    DIR/resolved_recipe.yaml  report.json  report.md  plots/  posttrain.log  base_model/  runs/ (trackers)
    DIR/<stage>/stage.json    the stage's state (`StageState`)
    DIR/<stage>/model/        a trained model (trainer stages), adapter/ (LoRA), checkpoints/, train_result.json;
                              written as model.tmp/ and checkpoints/incomplete/checkpoint-N, renamed when complete
    DIR/<stage>/runs/         experiment-tracker logs of a trainer stage (TensorBoard event files)
    DIR/<stage>/metrics.jsonl one flat JSON line per logging step (keys below)
    DIR/<stage>/data.jsonl, pairs.jsonl, prompts.jsonl, eval.jsonl, stats.json (distill),
                samples.jsonl (eval)
    DIR/<stage>.prev/         the last finished outputs of a stage whose config or inputs changed
    DIR/<stage>.unfinished/   an unfinished attempt of another config, set aside
    DIR/posttrain.lock        held while a run uses DIR (run_lock.py)

What a user can get wrong about the folder itself (a file where it should be, read-only, full) is
one line naming the path (`RunFolderError`), never a traceback, and leaves a resumable state.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from posttrain.core.errors import DataError, RunFolderError

log = logging.getLogger("posttrain.core.run_folder")

# --------------------------------------------------------------------------------------------------
# Names in DIR/

RESOLVED_RECIPE = "resolved_recipe.yaml"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"
LOG_FILE = "posttrain.log"
#: A base model and tokenizer the recipe builds (tiny model, trained tokenizer).
BASE_DIR = "base_model"
#: Held while a `posttrain run` uses DIR (who holds it: PID, host, start time); see run_lock.py.
LOCK_FILE = "posttrain.lock"
#: Experiment-tracker logs (TensorBoard event files): DIR/runs/ for the run's final metrics per stage,
#: DIR/<stage>/runs/ for a trainer stage's training curves; one subfolder per invocation, `<time>_<host>`.
TRACKING_DIR = "runs"
#: Names under DIR that a stage may not take.
RESERVED_STAGE_NAMES = frozenset({BASE_DIR, PLOTS_DIR, TRACKING_DIR, RESOLVED_RECIPE, REPORT_JSON, REPORT_MD, LOG_FILE,
                                  LOCK_FILE})
#: Suffix of the folder that keeps the last *finished* outputs of a stage whose config or inputs changed.
PREV_SUFFIX = ".prev"
#: Suffix of the folder that keeps an unfinished attempt (failed, interrupted, or of unknown config) set aside.
UNFINISHED_SUFFIX = ".unfinished"
#: Suffix of anything written under a temporary name and renamed when complete.
TMP_SUFFIX = ".tmp"
#: A stage's name may not end in these: they would collide with its own or another stage's backups.
RESERVED_SUFFIXES = (PREV_SUFFIX, UNFINISHED_SUFFIX, TMP_SUFFIX)

# Names in DIR/<stage>/
STATE_FILE = "stage.json"
#: DIR/<stage>/reuse.json: the identity of the stage without its selection options (StageConfig.selection_fields).
REUSE_FILE = "reuse.json"
#: What the ranks of a launched (multi-process) stage hand back to the runner.
RESULT_FILE = "result.json"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
#: checkpoints/incomplete/: where a checkpoint is written before it is renamed to checkpoints/checkpoint-N.
CHECKPOINT_STAGING = "incomplete"
#: What the trainer's train() returned, so a rerun that only saves the model reports the same figures.
TRAIN_RESULT_FILE = "train_result.json"
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
#: GRPO with vLLM rollouts: mean per-token |log p_trainer - log p_vLLM| over a logging step's completions (what
#: TRL measures for its importance-sampling correction), and the largest token's. Near 0 when vLLM samples from
#: the model being trained; large when weights or router biases did not reach vLLM.
ROLLOUT_LOGP_DIFF = "rollout/logp_diff"
ROLLOUT_LOGP_DIFF_MAX = "rollout/logp_diff_max"
#: On-policy distillation, per logging step on the student's own samples (`eval_` + key: on held-out prompts): the
#: exact reverse KL(student ‖ teacher) per completion token, summed over the vocabulary, and the share of completion
#: positions where the student's most likely next token is the teacher's.
OPD_REVERSE_KL = "opd/reverse_kl"
OPD_AGREEMENT = "opd/agreement"
#: GRPO with a distillation term: the per-token reverse KL to the teacher on the rollouts (the sampled estimate
#: log π_old(y_t) − log π_teacher(y_t)), and the mean per-token term the advantages got (−weight × that).
DISTILL_TERM_REVERSE_KL = "distill_term/reverse_kl"
DISTILL_TERM = "distill_term/advantage"
#: Tools (GRPO per logging step, eval over its sampled completions): calls made per completion, the share of calls
#: whose program failed (error, timeout, killed), assistant turns per completion, the share of completions that made
#: a call, and the accuracy of those with a call and of those without (`posttrain/core/tools.py`).
TOOL_CALLS = "tools/calls_per_completion"
TOOL_ERROR_RATE = "tools/error_rate"
TOOL_TURNS = "tools/turns"
TOOL_USED = "tools/used"
TOOL_ACCURACY_WITH_CALL = "tools/accuracy_with_call"
TOOL_ACCURACY_WITHOUT_CALL = "tools/accuracy_without_call"
#: GRPO: seconds spent inside tool calls per generation round, and their share of the step's time.
TOOL_SECONDS = "tools/seconds"
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
# Keys of an eval stage's metrics in report.json (names scripts rely on)

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

#: A trainer stage's seconds in training steps (sampling included; loading, held-out evaluation and saving not),
#: over every attempt of a resumed stage; an on_policy_distill stage's student seconds are those less the
#: seconds of its teacher's forward passes (`teacher_seconds`): what a compute comparison between stages reads.
TRAIN_SECONDS = "train_seconds"
STUDENT_SECONDS = "student_seconds"
TEACHER_SECONDS = "teacher_seconds"
#: A pass_rate_filter stage's metrics: prompts kept, dropped as always / never solved, and prompts by pass rate.
KEPT = "kept"
DROPPED_SOLVED = "dropped_solved"
DROPPED_UNSOLVED = "dropped_unsolved"
PASS_RATES = "pass_rates"
#: What TRL's DPOTrainer logs per step (and with `eval_` on held-out pairs).
DPO_ACCURACY = "rewards/accuracies"
DPO_MARGIN = "rewards/margins"
DPO_CHOSEN = "rewards/chosen"
DPO_REJECTED = "rewards/rejected"


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
    #: When a finished attempt ended (ns since the epoch): with the hash, the stamp of its outputs.
    finished: str | None = None

    def stamp(self) -> str:
        """Names this version of the stage's outputs: a later stage that read them records it in its identity,
        so it reruns whenever they are made again."""
        return f"{self.config_hash}@{self.finished}" if self.finished else self.config_hash

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
    """One stage in report.json: `kind`, `status` (done, skipped, failed), `seconds`, `metrics`."""

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
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Rename folder `src` to `dst`, replacing what `dst` held (which is deleted only once `src` is in place)."""
    old = dst.with_name(dst.name + ".old" + TMP_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file. A torn last line (a writer killed mid-line) is dropped with a warning; a broken
    line before the end is an error naming the file and line."""
    rows = []
    with open(path) as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            if lineno == len(lines) and not line.endswith("\n"):
                log.warning("%s:%d: dropped a torn last line (a run was stopped while writing it)", path, lineno)
                break
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc})") from None
    return rows


def repair_jsonl_tail(path: Path) -> int:
    """Cut a torn last line off a JSON-lines file before appending to it (else the next row would be glued onto
    it). Returns how many bytes were dropped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    elif data:
        last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[last_start:])
        except ValueError:
            keep = last_start
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
        log.warning("%s: dropped a torn last line (%d bytes; a run was stopped while writing it)", path,
                    len(data) - keep)
    return len(data) - keep


def trim_jsonl(path: Path, keep: Any) -> int:
    """Keep only the rows of a JSON-lines file for which `keep(row)` is true (a torn last line goes too); atomic.
    Returns how many rows were dropped."""
    if not path.exists():
        return 0
    rows = read_jsonl(path)
    kept = [r for r in rows if keep(r)]
    if len(kept) != len(rows) or path.read_bytes()[-1:] not in (b"", b"\n"):
        write_text_atomic(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in kept))
    return len(rows) - len(kept)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_jsonable) + "\n")


# --------------------------------------------------------------------------------------------------
# What a user can get wrong about the folder

#: Errors that say something about the disk or the path, whatever was being written.
_ALWAYS_USER = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
#: Errors that do when they name a path (a file where a folder should be, no permission).
_USER_WITH_PATH = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
#: Below this much free space, a failed write is taken for a full disk (torch and safetensors wrap ENOSPC).
_FULL_BYTES = 1 << 20


def user_os_error(exc: BaseException, where: Path) -> str | None:
    """One line for an OS error the user can fix, naming the path (`where` when the error names none);
    None when `exc` is something else."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and (e.errno in _ALWAYS_USER or (e.errno in _USER_WITH_PATH and e.filename)):
            return f"{e.filename or where}: {e.strerror or os.strerror(e.errno or 0)}"
        e = e.__cause__ or e.__context__
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if shutil.disk_usage(probe).free < _FULL_BYTES:
            return f"{where}: {os.strerror(errno.ENOSPC)} ({type(exc).__name__}: {str(exc)[:200]})"
    except OSError:
        pass
    return None


@contextlib.contextmanager
def user_os_errors(where: Path) -> Iterator[None]:
    """Turn an OS error the user can fix into a one-line `RunFolderError` naming the path."""
    try:
        yield
    except OSError as exc:
        message = user_os_error(exc, where)
        if message is None:
            raise
        raise RunFolderError(message) from None


def prepare_run_dir(run_dir: Path) -> None:
    """Create the output folder, or say in one line why it cannot be used."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: the output folder is a file: choose another output_dir (--output-dir)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"{exc.filename or run_dir}: cannot create the output folder: "
                             f"{exc.strerror or exc}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunFolderError(f"{run_dir}: the output folder is not writable: choose another output_dir "
                             "(--output-dir) or fix its permissions")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if not isinstance(value, int | float | str | bool) else value
