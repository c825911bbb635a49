"""Stage `on_policy_distill`: the student answers the prompts itself and learns from the teacher on every token of it.

TRL's `DistillationTrainer` (GKD, Agarwal et al. 2024): each step the student samples completions for a batch of
prompts (in process, or with vLLM: `trl: {use_vllm: true}`), the teacher scores every token of them, and the
student moves towards the teacher's next-token distribution under the generalised JSD (`trl.beta`: 1, TRL's
default, is the reverse KL of Qwen3's strong-to-weak distillation; 0 the forward KL). No verifier is needed, and the
student's own mistakes are corrected where it makes them, which SFT on teacher samples cannot do.

The teacher is an earlier stage's model, a path or a hub name, and must share the student's tokenizer: a recipe
whose teacher has another vocabulary is refused by `posttrain validate` (`posttrain/recipe/teachers.py`), and
the stage compares the loaded tokenizers again before it trains. Held-out prompts (`heldout:`) are scored like
the training batches at the start, every `eval_steps` and at the end: the reverse KL per token and the
student-teacher agreement (`posttrain/training/opd_metrics.py`) on answers to prompts it never trained on.
LoRA, MoE balancing, the MTP loss and resumable checkpoints are the trainer-stage base's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from posttrain.core.identity import MarkedModel
from posttrain.core.run_folder import (
    EVAL_FILE,
    METRICS_FILE,
    OPD_AGREEMENT,
    OPD_REVERSE_KL,
    PROMPTS_FILE,
    STEP,
    STUDENT_SECONDS,
    TEACHER_SECONDS,
    read_jsonl,
)
from posttrain.stages.base import StageContext, StageResult
from posttrain.training.trainer import TrainerConfig, TrainerStage, checkpoint_dir, require_columns

#: Prefix TRL gives the figures of its held-out evaluation.
EVAL_PREFIX = "eval_"


class HeldOutSpec(MarkedModel):
    """Held-out prompts the reverse KL and the agreement are measured on (section `heldout:`)."""

    model_config = ConfigDict(extra="forbid")

    #: An earlier stage (its `data_file`), a jsonl/parquet file, or a hub data set.
    data: str
    data_file: str = EVAL_FILE
    split: str = "test"
    prompt_column: str = "prompt"
    #: Prompts used (the first ones): each evaluation samples one answer per prompt.
    max_samples: int = Field(64, ge=1)


class Config(TrainerConfig):
    #: Prompts the student answers: an earlier stage (its `data_file`), a file, or a hub data set.
    data_file: str = PROMPTS_FILE
    prompt_column: str = "prompt"
    #: The teacher: an earlier stage (its model), a path or a hub name, with the student's tokenizer.
    teacher: str
    #: Where the reverse KL and the student-teacher agreement are measured besides the training batches.
    heldout: HeldOutSpec | None = None

    ref_fields: ClassVar[tuple[str, ...]] = ("model", "data", "teacher")
    trl_config: ClassVar[str | None] = "trl:DistillationConfig"
    trl_defaults: ClassVar[dict[str, Any]] = {
        "logging_steps": 5,
        "save_steps": 50,
        "save_total_limit": 2,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
    }

    def data_refs(self) -> list[str]:
        return super().data_refs() + ([self.heldout.data] if self.heldout is not None else [])


class OnPolicyDistillStage(TrainerStage):
    cfg: Config
    padding_side = "left"  # the student generates
    log_keys = ("loss", OPD_REVERSE_KL, OPD_AGREEMENT)

    def trainer_class(self) -> type:
        from posttrain.training.trainers import OnPolicyDistillTrainer

        return OnPolicyDistillTrainer

    def prepare_data(self, dataset: Any) -> Any:
        return _prompts(dataset, self.cfg.prompt_column, self.cfg, "on-policy distillation prompts")

    def trl_overrides(self) -> dict[str, Any]:
        if self.cfg.heldout is None:
            return {}
        kwargs = self.cfg.trl_kwargs()
        resumed = any(checkpoint_dir(self.ctx).glob("checkpoint-*"))
        return {"eval_strategy": "steps", "eval_steps": kwargs.get("save_steps"), "eval_on_start": not resumed,
                "per_device_eval_batch_size": kwargs.get("per_device_train_batch_size", 8)}

    def trainer_kwargs(self, dataset: Any) -> dict[str, Any]:
        from posttrain.training.teacher import load_teacher

        ctx, cfg = self.ctx, self.cfg
        teacher, self.teacher_path = load_teacher(ctx, cfg.teacher, self.tokenizer, self.student_rows)
        out = {"train_dataset": dataset, "teacher_model": teacher}
        if cfg.heldout is not None:
            spec = cfg.heldout
            held = _prompts(ctx.load_dataset(spec.data, spec.data_file, spec.split), spec.prompt_column, cfg,
                            "held-out prompts")
            out["eval_dataset"] = held.select(range(min(spec.max_samples, len(held))))
        return out

    def load_model(self, path: str) -> Any:
        model = super().load_model(path)
        self.student_rows = model.config.get_text_config().vocab_size
        return model

    def after_init(self, trainer: Any, dataset: Any) -> None:
        trainer.setup_rollouts()  # the student's samples by posttrain's decode loop, as GRPO's rollouts

    def describe(self, args: Any, dataset: Any) -> str:
        per_step = args.per_device_train_batch_size * self.ctx.num_processes * args.gradient_accumulation_steps
        divergence = {0.0: "forward KL", 1.0: "reverse KL"}.get(args.beta, f"generalised JSD (beta {args.beta:g})")
        return (f"on-policy distillation from {self.cfg.teacher} on {len(dataset)} prompts: {per_step} student "
                f"answers per step, {divergence}, {args.max_steps if args.max_steps > 0 else 'all'} steps")

    def summary(self, trainer: Any, result: Any, dataset: Any) -> dict[str, Any]:
        from posttrain.training.opd_metrics import TEACHER

        if self.cfg.heldout is not None and not _evaluated_at(self.ctx.stage_dir / METRICS_FILE, result.global_step):
            trainer.evaluate()  # the held-out figures of the final student
        teacher_s = self.clock.parts.get(TEACHER, 0.0)
        out: dict[str, Any] = {"rows": len(dataset), "teacher": self.teacher_path, "beta": self.args.beta,
                               TEACHER_SECONDS: round(teacher_s, 2),
                               STUDENT_SECONDS: round(self.clock.seconds - teacher_s, 2)}
        out.update(first_last(self.ctx.stage_dir / METRICS_FILE))
        return out


def run(ctx: StageContext) -> StageResult:
    return OnPolicyDistillStage(ctx).run()


def _prompts(dataset: Any, column: str, cfg: Config, what: str) -> Any:
    require_columns(dataset, [column], cfg, what, "set prompt_column")
    dataset = dataset.select_columns([column])
    return dataset.rename_column(column, "prompt") if column != "prompt" else dataset


def _evaluated_at(path: Path, step: int) -> bool:
    rows = read_jsonl(path) if path.exists() else []
    return any(r.get(STEP) == step and EVAL_PREFIX + OPD_AGREEMENT in r for r in rows)


def first_last(path: Path) -> dict[str, float]:
    """The reverse KL and agreement of the first and last logged steps, on training samples and held-out prompts."""
    rows = read_jsonl(path) if path.exists() else []
    out: dict[str, float] = {}
    for prefix, label in (("", "train"), (EVAL_PREFIX, "heldout")):
        for key, name in ((OPD_REVERSE_KL, "reverse_kl"), (OPD_AGREEMENT, "agreement")):
            values = [r[prefix + key] for r in rows if isinstance(r.get(prefix + key), int | float)]
            if values:
                out[f"{label}_{name}_first"] = round(values[0], 4)
                out[f"{label}_{name}_last"] = round(values[-1], 4)
    return out
