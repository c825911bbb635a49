"""Stage `dpo`: Direct Preference Optimization with TRL's DPOTrainer, plus DeepSeek-V3's MoE load balancing.

DeepSeek's chat models before R1 (DeepSeek LLM, V2) were aligned with SFT and then DPO. This stage
reads `prompt`/`chosen`/`rejected` rows (the distill stage's pairs.jsonl by default, a local file, a
hub preference set, or a weighted mix), holds out a share of the prompts (pairs of one prompt stay
on one side), and trains the policy against a frozen reference: the starting model, unless
`reference:` names another (an earlier stage, a path or a hub name). With LoRA and no `reference`,
the reference is the model with its adapter switched off (no second copy).

DPO's implicit reward of a completion is β·log(π(y|x) / π_ref(y|x)). The report gives, on the held-out
pairs, the share where the chosen completion's implicit reward beats the rejected one's (accuracy)
and the mean difference (margin): exact figures over all held-out pairs, not TRL's mean of batch
means. Writes DIR/<name>/model/, checkpoints/ (resumable) and metrics.jsonl (TRL's `rewards/*`,
`logps/*`, the loss, MaxVio; `eval_*` rows on the held-out pairs).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from posttrain.core.errors import DataError
from posttrain.core.run_folder import DPO_ACCURACY, DPO_CHOSEN, DPO_MARGIN, DPO_REJECTED, LOSS, PAIRS_FILE
from posttrain.stages.base import StageContext, StageResult
from posttrain.stages.reward_model import split_by_prompt
from posttrain.training.trainer import TrainerConfig, TrainerStage, require_columns


class Config(TrainerConfig):
    #: Preference pairs: an earlier stage (its `data_file`), a jsonl/parquet file, a hub data set, or a mix.
    data_file: str = PAIRS_FILE
    #: The frozen reference model: an earlier stage, a path or a hub name (default: the model being trained).
    reference: str | None = None
    #: Share of prompts held out to measure preference accuracy and margin (0: none).
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"

    trl_config: ClassVar[str | None] = "trl:DPOConfig"
    trl_defaults: ClassVar[dict[str, Any]] = {
        "logging_steps": 10,
        "eval_strategy": "steps",
        "eval_steps": 50,
        "per_device_eval_batch_size": 64,
        "save_steps": 100,
        "save_total_limit": 2,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
    }
    ref_fields: ClassVar[tuple[str, ...]] = ("model", "data", "reference")


class DPOStage(TrainerStage):
    cfg: Config
    log_keys = (LOSS, DPO_ACCURACY, DPO_MARGIN, "eval_" + DPO_ACCURACY)

    def trainer_class(self) -> type:
        from posttrain.training.trainers import DPOTrainer

        class Trainer(DPOTrainer):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                from posttrain.training.lora import keep_lora_targets

                with keep_lora_targets(kwargs["model"]):  # TRL applies the LoRA config (see load_model)
                    super().__init__(*args, **kwargs)

            def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                         metric_key_prefix: str = "eval") -> dict[str, float]:
                """Exact held-out figures: TRL's own per-batch loss and rewards, weighted by the pairs in each batch
                (TRL's evaluate averages batch means, which over-weights a short last batch)."""
                if eval_dataset is not None or self.eval_dataset is None:
                    return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
                was_training = self.model.training
                self.model.eval()  # DPOTrainer.log adds its batch metrics of the current mode: eval's are cleared
                try:
                    logs = {f"{metric_key_prefix}_{k}": v for k, v in held_out_figures(self).items()}
                    self.log(logs)
                finally:
                    self.model.train(was_training)
                self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, logs)
                return logs

        return Trainer

    def prepare_data(self, dataset: Any) -> Any:
        """prompt/chosen/rejected rows; a share of the prompts is held out (`self.held_out`)."""
        cfg = self.cfg
        names = {cfg.prompt_column: "prompt", cfg.chosen_column: "chosen", cfg.rejected_column: "rejected"}
        require_columns(dataset, list(names), cfg, "preference data",
                        "expected prompt, chosen, rejected; set prompt_column / chosen_column / rejected_column")
        dataset = dataset.select_columns(list(names)).rename_columns({k: v for k, v in names.items() if k != v})
        train, self.held_out = split_by_prompt(dataset, cfg.eval_fraction, self.ctx.seed)
        if len(train) == 0:
            raise DataError(f"stage {cfg.name!r}: no training pairs left after holding out {cfg.eval_fraction:.0%} "
                            "of the prompts; lower eval_fraction or give more pairs")
        return train

    def trl_overrides(self) -> dict[str, Any]:
        return {} if len(self.held_out) else {"eval_strategy": "no"}

    def load_model(self, path: str) -> Any:
        """The model without LoRA: DPOTrainer applies the adapter itself (`peft_config`) and then takes the model
        with the adapter switched off as the reference; handed an adapted model it would copy the adapter instead."""
        from posttrain.core.models import load_causal_lm

        self.model = load_causal_lm(path, self.ctx.recipe.model if self.cfg.model in (None, "base") else None)
        return self.model

    def trainer_kwargs(self, dataset: Any) -> dict[str, Any]:
        from posttrain.training.lora import find_targets, lora_config

        kwargs: dict[str, Any] = {"train_dataset": dataset, "ref_model": self.reference_model(),
                                  "eval_dataset": self.held_out if len(self.held_out) else None}
        if self.cfg.lora is not None:
            targets = find_targets(self.model)
            spec = self.cfg.lora.model_copy(update={"targets": [p for p in self.cfg.lora.targets if targets[p]]})
            kwargs["peft_config"] = lora_config(spec, targets)
        return kwargs

    def reference_model(self) -> Any:
        """The frozen reference, loaded here; None where TRL needs none (LoRA: adapter off; precomputed log-probs)."""
        from posttrain.core.models import load_causal_lm

        cfg = self.cfg
        if cfg.reference is None and (cfg.lora is not None or cfg.trl.get("precompute_ref_log_probs")):
            return None
        ref = cfg.reference if cfg.reference is not None else cfg.model
        spec = self.ctx.recipe.model if ref in (None, "base") else None
        model = load_causal_lm(self.ctx.resolve_model(ref), spec)
        model.requires_grad_(False)
        return model.eval()

    def describe(self, args: Any, dataset: Any) -> str:
        ref = self.cfg.reference or "the starting model"
        return (f"DPO on {len(dataset)} pairs from {', '.join(self.cfg.data_refs())} ({len(self.held_out)} held out), "
                f"β = {args.beta:g}, reference {ref}, {_length(args)}")

    def summary(self, trainer: Any, result: Any, dataset: Any) -> dict[str, Any]:
        metrics: dict[str, Any] = {"pairs": len(dataset), "eval_pairs": len(self.held_out), "beta": self.args.beta}
        if not len(self.held_out):
            return metrics
        found = held_out_figures(trainer)
        metrics.update(pairwise_accuracy=round(found[DPO_ACCURACY], 4), reward_margin=round(found[DPO_MARGIN], 4),
                       chosen_reward=round(found[DPO_CHOSEN], 4), rejected_reward=round(found[DPO_REJECTED], 4),
                       eval_loss=round(found[LOSS], 5))
        logged = {row.get("step") for row in trainer.state.log_history if f"eval_{DPO_ACCURACY}" in row}
        if result.global_step not in logged:  # the curve ends at the final model
            self.ctx.append_metrics({"step": result.global_step, **{f"eval_{k}": v for k, v in found.items()}})
        self.ctx.log.info("held-out preference accuracy %.3f on %d pairs (margin %.3f)", found[DPO_ACCURACY],
                          len(self.held_out), found[DPO_MARGIN])
        return metrics


def run(ctx: StageContext) -> StageResult:
    return DPOStage(ctx).run()


def held_out_figures(trainer: Any) -> dict[str, float]:
    """Loss, preference accuracy, margin and mean implicit rewards over every held-out pair, from TRL's own loss
    code (same tokenisation, same reference), each batch weighted by its number of pairs."""
    import torch

    model = trainer.model
    was_training = model.training
    model.eval()
    keys = (DPO_ACCURACY, DPO_MARGIN, DPO_CHOSEN, DPO_REJECTED)
    sums = dict.fromkeys((LOSS, *keys), 0.0)
    total = 0
    batch_metrics = trainer._metrics["eval"]
    try:
        for batch in trainer.get_eval_dataloader():
            batch = trainer._prepare_inputs(batch)
            with torch.no_grad(), trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(model, batch)
            pairs = int(trainer.accelerator.gather(torch.tensor([batch["input_ids"].shape[0] // 2],
                                                                device=loss.device)).sum())
            sums[LOSS] += float(trainer.accelerator.gather(loss.detach().reshape(1)).mean()) * pairs
            for key in keys:
                sums[key] += batch_metrics[key][-1] * pairs
            total += pairs
    finally:
        batch_metrics.clear()
        model.train(was_training)
    return {k: v / max(total, 1) for k, v in sums.items()}


def _length(args: Any) -> str:
    return f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"


# --------------------------------------------------------------------------------------------------
# The report's section on this kind (posttrain.report finds these hooks on this module)
