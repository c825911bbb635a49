"""Step time of our SFT and GRPO stages against the raw TRL trainer on the same model, data and config.

Ours is the stage as `posttrain run` calls it (`posttrain.stages.sft.run(ctx)`, `...grpo.run(ctx)`
with a `StageContext`, in process): TRL's trainer plus what the stage adds: DeepSeek-V3's MoE
balancing (router hooks counting expert loads, the sequence-wise balance loss, the bias update
after every step, MaxVio metrics), metrics.jsonl, the graceful-stop handler and our progress bar;
for GRPO also the dynamic-sampling mixin (off by default, as here) and the reward wrappers. The
reference is `SFTTrainer` / `GRPOTrainer` constructed directly with the same model (loaded from the
same saved tiny DeepSeek-V3), the same rows, the same reward functions and the very same TRL config
object fields (built by `build_trl_config` from one `trl:` mapping), then `.train()`.

Step time is the wall time between consecutive `on_step_end` events of the trainer's callback
handler (observed by wrapping `CallbackHandler.on_step_end` for the duration of a run, identically
for both), so it covers data loading, forward/backward, the optimizer, every callback and the
logging steps. The first `warmup` steps are dropped; a run's figure is the mean of the rest (a
whole number of logging periods, so logging is counted at its real share). Runs alternate ours /
raw / raw / ours so drift on a shared machine falls on both, and each method reports its better
run: a burst of load from other jobs slows a whole run by 50 % here, which the better run of two
mostly escapes. torch runs on one thread.

    python -m benchmarks.trainer_overhead [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import one_thread

#: Rewards of the tiny recipe's GRPO stage: (name, weight, kwargs).
GRPO_REWARDS: tuple[tuple[str, float, dict[str, Any]], ...] = (("math", 1.0, {}), ("format", 0.1, {"strict": True}))


@dataclass(frozen=True)
class Sizes:
    """How much each run trains; `timed` steps after `warmup` ones, `timed` a multiple of `logging_steps`."""

    sft_batch: int
    sft_warmup: int
    sft_timed: int
    grpo_prompts: int
    grpo_generations: int
    grpo_completion_len: int
    grpo_warmup: int
    grpo_timed: int
    logging_steps: int
    repeats: int  # runs of each method, ABBA order


FULL = Sizes(sft_batch=64, sft_warmup=3, sft_timed=30, grpo_prompts=16, grpo_generations=8, grpo_completion_len=48,
             grpo_warmup=2, grpo_timed=10, logging_steps=5, repeats=2)
QUICK = Sizes(sft_batch=8, sft_warmup=1, sft_timed=4, grpo_prompts=2, grpo_generations=4, grpo_completion_len=12,
              grpo_warmup=1, grpo_timed=2, logging_steps=2, repeats=1)


# --------------------------------------------------------------------------------------------------
# Inputs: the tiny model and the arithmetic task


def build_inputs(root: Path, sizes: Sizes, seed: int) -> dict[str, Path]:
    """A saved tiny DeepSeek-V3 + tokenizer, SFT rows (prompt, completion) and GRPO prompts (prompt, solution)."""
    from data_pipelines.tasks.arithmetic import corpus, solution_text, train_prompts
    from posttrain.core.tiny import build_tiny_model, train_tokenizer

    base = root / "base_model"
    tokenizer = train_tokenizer(corpus(), 512)
    build_tiny_model(tokenizer, seed=seed).save_pretrained(base)
    tokenizer.save_pretrained(base)
    sft_rows = sizes.sft_batch * (sizes.sft_warmup + sizes.sft_timed)
    sft = root / "sft.jsonl"
    with open(sft, "w") as f:
        for row in train_prompts(sft_rows, seed):
            f.write(json.dumps({"prompt": row["prompt"], "completion": solution_text(row["a"], row["b"])}) + "\n")
    grpo = root / "grpo.jsonl"
    with open(grpo, "w") as f:
        for row in train_prompts(sizes.grpo_prompts * (sizes.grpo_warmup + sizes.grpo_timed), seed + 1):
            f.write(json.dumps({"prompt": row["prompt"], "solution": row["solution"]}) + "\n")
    return {"base": base, "sft": sft, "grpo": grpo}


def trl_options(kind: str, sizes: Sizes, seed: int) -> dict[str, Any]:
    """The one `trl:` mapping both methods train with (the tiny recipe's settings, the benchmark's sizes)."""
    common = {"logging_steps": sizes.logging_steps, "save_strategy": "no", "seed": seed, "report_to": "none",
              "dataloader_num_workers": 0, "gradient_checkpointing": False}
    if kind == "sft":
        return {**common, "max_steps": sizes.sft_warmup + sizes.sft_timed,
                "per_device_train_batch_size": sizes.sft_batch, "learning_rate": 2e-3, "lr_scheduler_type": "cosine",
                "warmup_steps": 2, "max_length": 96}
    return {**common, "max_steps": sizes.grpo_warmup + sizes.grpo_timed,
            "per_device_train_batch_size": sizes.grpo_prompts * sizes.grpo_generations,
            "num_generations": sizes.grpo_generations, "max_completion_length": sizes.grpo_completion_len,
            "temperature": 1.0, "learning_rate": 5e-5, "lr_scheduler_type": "constant_with_warmup",
            "warmup_steps": 2, "adam_beta2": 0.99, "max_grad_norm": 1.0, "beta": 0.0, "scale_rewards": "group",
            "loss_type": "dapo", "epsilon_high": 0.28, "mask_truncated_completions": True, "log_completions": False}


def stage_dict(kind: str, inputs: dict[str, Path], sizes: Sizes, seed: int) -> dict[str, Any]:
    """The recipe stage for `kind`, as a user would write it."""
    stage: dict[str, Any] = {"name": kind, "kind": kind, "data": str(inputs[kind]),
                             "trl": trl_options(kind, sizes, seed)}
    if kind == "sft":
        stage["moe_balance"] = {"bias_update_speed": 0.001, "seq_aux_loss_coef": 0.0001}
    else:
        stage["rewards"] = [{"name": n, "weight": w, "kwargs": kw} for n, w, kw in GRPO_REWARDS]
        stage["moe_balance"] = {"bias_update_speed": 0.001}
        stage["rollout"] = {"backend": "transformers"}
    return stage


def recipe_for(kind: str, inputs: dict[str, Path], run_dir: Path, sizes: Sizes, seed: int) -> Any:
    from posttrain.recipe import parse_recipe
    from posttrain.stages import KINDS

    raw = {"output_dir": str(run_dir), "seed": seed, "model": {"name_or_path": str(inputs["base"])},
           "stages": [stage_dict(kind, inputs, sizes, seed)]}
    return parse_recipe(yaml.safe_dump(raw), source=f"<benchmark {kind} recipe>", kinds=KINDS)


# --------------------------------------------------------------------------------------------------
# The two methods


def run_ours(kind: str, inputs: dict[str, Path], run_dir: Path, sizes: Sizes, seed: int) -> None:
    """The stage exactly as the runner calls it in process."""
    from posttrain.stages import KINDS
    from posttrain.stages.base import StageContext

    recipe = recipe_for(kind, inputs, run_dir, sizes, seed)
    ctx = StageContext(recipe, recipe.stage(kind), run_dir, str(inputs["base"]), logging.getLogger(f"posttrain.{kind}"))
    KINDS.get(kind).run(ctx)


def run_raw(kind: str, inputs: dict[str, Path], run_dir: Path, sizes: Sizes, seed: int) -> None:
    """TRL's trainer constructed directly: same model, rows, rewards and config fields; no posttrain additions."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.core.run_folder import read_jsonl
    from posttrain.recipe import build_trl_config

    stage = recipe_for(kind, inputs, run_dir, sizes, seed).stage(kind)
    tokenizer = AutoTokenizer.from_pretrained(inputs["base"], padding_side="right" if kind == "sft" else "left")
    model = AutoModelForCausalLM.from_pretrained(inputs["base"])
    dataset = datasets.Dataset.from_list(read_jsonl(inputs[kind]))
    if kind == "sft":
        from trl import SFTTrainer

        args = build_trl_config(stage, run_dir / "checkpoints", seed=seed)
        trainer: Any = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    else:
        from trl import GRPOTrainer

        from rewards.registry import get_reward

        args = build_trl_config(stage, run_dir / "checkpoints", use_vllm=False, seed=seed)
        rewards = [get_reward(name, **kwargs) for name, _, kwargs in GRPO_REWARDS]
        trainer = GRPOTrainer(model=model, args=args, reward_funcs=rewards, train_dataset=dataset,
                              processing_class=tokenizer)
    trainer.train()


METHODS: dict[str, Callable[[str, dict[str, Path], Path, Sizes, int], None]] = {"ours": run_ours, "raw TRL": run_raw}


# --------------------------------------------------------------------------------------------------
# Timing


@contextlib.contextmanager
def step_clock() -> Iterator[list[float]]:
    """Timestamps of every optimizer step's end, from any transformers Trainer running meanwhile in this process.

    Wraps `CallbackHandler.on_step_end` (restored on exit): the stage builds its own trainer, so a
    callback cannot be handed to it, and the wrap treats both methods alike.
    """
    from transformers.trainer_callback import CallbackHandler

    stamps: list[float] = []
    original = CallbackHandler.on_step_end

    def on_step_end(self: Any, *args: Any, **kwargs: Any) -> Any:
        control = original(self, *args, **kwargs)
        stamps.append(time.perf_counter())
        return control

    CallbackHandler.on_step_end = on_step_end  # type: ignore[method-assign]
    try:
        yield stamps
    finally:
        CallbackHandler.on_step_end = original  # type: ignore[method-assign]


def steady_step_times(stamps: list[float], warmup: int) -> list[float]:
    """Durations of steps warmup+1 .. N (step k lasts from the end of step k-1 to its own end).

    >>> [round(x, 3) for x in steady_step_times([1.0, 1.5, 2.25, 3.0], warmup=2)]
    [0.75, 0.75]
    """
    durations = [b - a for a, b in itertools.pairwise(stamps)]  # steps 2 .. N: step 1 has no start stamp
    return durations[max(warmup - 1, 0):]


def measure(kind: str, inputs: dict[str, Path], root: Path, sizes: Sizes, seed: int) -> dict[str, Any]:
    """Both methods, `repeats` runs each in ABBA order; steady-state step times per method."""
    warmup = sizes.sft_warmup if kind == "sft" else sizes.grpo_warmup
    timed = sizes.sft_timed if kind == "sft" else sizes.grpo_timed
    names = list(METHODS)
    order = [n for i in range(sizes.repeats) for n in (names if i % 2 == 0 else names[::-1])]
    steps: dict[str, list[float]] = {n: [] for n in names}
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    logged: dict[str, Any] = {}
    for i, name in enumerate(order):
        run_dir = root / f"{kind}-{i}-{name.replace(' ', '_')}"
        start = time.perf_counter()
        # The raw trainers print every log dict to stdout; keep the benchmark's output to its table.
        with step_clock() as stamps, contextlib.redirect_stdout(io.StringIO()):
            METHODS[name](kind, inputs, run_dir, sizes, seed)
        wall = time.perf_counter() - start
        if len(stamps) != warmup + timed:
            raise RuntimeError(f"{kind} / {name}: {len(stamps)} optimizer steps observed, expected {warmup + timed}")
        times = steady_step_times(stamps, warmup)
        steps[name] += times
        runs[name].append({"mean_s": statistics.fmean(times), "wall_s": round(wall, 2)})
        if name == "ours":
            logged = stage_log_summary(run_dir / kind / "metrics.jsonl")
    out: dict[str, Any] = {name: {"best_run_mean_s": min(r["mean_s"] for r in runs[name]),
                                  "mean_s": statistics.fmean(t), "median_s": statistics.median(t), "min_s": min(t),
                                  "steps": len(t), "runs": runs[name]} for name, t in steps.items()}
    out["ours"]["logged"] = logged
    return out


def stage_log_summary(path: Path) -> dict[str, Any]:
    """What our stage logged (evidence that its additions ran): rows of metrics.jsonl and the MoE keys in them."""
    from posttrain.core.run_folder import read_jsonl

    rows = read_jsonl(path) if path.exists() else []
    return {"metrics_rows": len(rows), "moe_max_violation": any("moe/max_violation" in r for r in rows)}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Library chatter and per-map progress bars off (as `posttrain run` sets them up), restored afterwards."""
    import datasets

    names = ("posttrain", "transformers", "trl", "datasets", "accelerate")
    levels = {n: logging.getLogger(n).level for n in names}
    bars = datasets.is_progress_bar_enabled()
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def run(quick: bool = False, seed: int = 0, sizes: Sizes | None = None) -> dict[str, Any]:
    """Measure our SFT and GRPO stages vs the raw TRL trainers; return the `benchmarks` result dict."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sizes = sizes or (QUICK if quick else FULL)
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp, one_thread(), quiet():
        root = Path(tmp)
        inputs = build_inputs(root, sizes, seed)
        for kind in ("sft", "grpo"):
            result = measure(kind, inputs, root, sizes, seed)
            details[kind] = result
            ours, raw = result["ours"], result["raw TRL"]
            if kind == "sft":
                what = (f"batch {sizes.sft_batch}, max_length 96, MoE balancing on (γ 0.001, α 0.0001); "
                        f"mean of steps {sizes.sft_warmup + 1}-{sizes.sft_warmup + sizes.sft_timed}")
            else:
                what = (f"{sizes.grpo_prompts} prompts x {sizes.grpo_generations} completions of up to "
                        f"{sizes.grpo_completion_len} tokens, math + format rewards, dapo, balancing on; mean of "
                        f"steps {sizes.grpo_warmup + 1}-{sizes.grpo_warmup + sizes.grpo_timed}")
            trainer = "SFTTrainer" if kind == "sft" else "GRPOTrainer"
            rows.append({"name": f"{kind.upper()} step: our stage vs raw TRL {trainer}",
                         "ours": round(ours["best_run_mean_s"], 4), "reference": round(raw["best_run_mean_s"], 4),
                         "unit": "s/step",
                         "note": f"{what}; the better of {sizes.repeats} run(s) each (ABBA order); untrained tiny "
                                 f"DeepSeek-V3, torch on 1 thread"})
    return {"rows": rows, "params": {**asdict(sizes), "seed": seed, "torch_threads": 1}, "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = parser.parse_args()
    result = run(quick=args.quick)
    for row in result["rows"]:
        print(f"{row['name']:45} ours {row['ours']:>8} s  raw {row['reference']:>8} s  "
              f"{row['ours'] / row['reference']:.3f}x\n{'':45} {row['note']}")
    print(json.dumps(result["details"], indent=1))


if __name__ == "__main__":
    main()
