"""The tiny recipe's GRPO step, where its time goes, ours against raw TRL; and the SFT model's rollouts.

The models are the tiny recipe's own: its distill, SFT and reward-model stages, run once into
runs/bench-grpo/ (torch on one thread; a later run reuses them), or those of a finished run (`--run-dir`,
e.g. runs/tiny-r1 after `make demo`). The GRPO stage is the recipe's, as written (16 prompts x 8
completions of up to 48 tokens at T = 1, math + format + the reward model, KL to the SFT model with
β = 0.04, DAPO's loss, MoE balancing), on the distill stage's training prompts, for a few steps.

Ours is the stage as `posttrain run` calls it (rollouts by posttrain's decode loop); the reference is TRL's
`GRPOTrainer` built directly on the same SFT model, prompts, reward functions (with their weights) and TRL
config (rollouts by `model.generate`). Each step's wall time is split into phases by timing, on the trainer
classes, the methods that do them (only the outermost call of a phase counts):

- generation: `_generate_single_turn` (the rollouts);
- reward scoring: `_calculate_rewards` (math, format, and the reward model's forward passes);
- reference forward: `_get_per_token_logps_and_entropies` on the reference model (the KL's log-probs);
- training forward: `compute_loss` (the policy's forward with gradients, the loss);
- backward: `Accelerator.backward`; optimizer: the optimizer's `step`;
- logging: `Trainer.log` (metrics.jsonl, callbacks' `on_log`); step-end callbacks: `on_step_end` (the MoE
  bias update, progress);
- other: the rest of the step (data loading, advantages, TRL's bookkeeping).

Runs alternate ours / raw / raw / ours; each method's figures are the mean over the steps after the warm-up of
its better run. Rollouts: the hf backend (the decode loop, length-bucketed, finished rows leave) against
`model.generate` on the SFT model, 16 held-out prompts x 8 at T = 1, up to 48 new tokens, one batch, tokens
counted exactly (up to and including end-of-sequence), median of ABBA calls. torch runs on one thread.

    python -m benchmarks.grpo_step [--quick] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from benchmarks import QUICK_TRAINING, RECIPE, ROOT, one_thread, print_result, recipe_stages

TRAIN_DIR = ROOT / "runs" / "bench-grpo"
PHASES = ("generation", "reward scoring", "reference forward", "training forward", "backward", "optimizer",
          "logging", "step-end callbacks", "other")


# --------------------------------------------------------------------------------------------------
# Where the time goes


class PhaseClock:
    """Time spent in each phase, as (phase, start, end) intervals; nested calls of one phase count once."""

    def __init__(self) -> None:
        self.intervals: list[tuple[str, float, float]] = []
        self._depth: dict[str, int] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        depth = self._depth.get(name, 0)
        self._depth[name] = depth + 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._depth[name] = depth
            if depth == 0:
                self.intervals.append((name, start, time.perf_counter()))

    def split(self, start: float, end: float) -> dict[str, float]:
        """Seconds of each phase within [start, end]; `other` is what no phase covers."""
        out = dict.fromkeys(PHASES, 0.0)
        for name, a, b in self.intervals:
            if start <= a and b <= end:
                out[name] += b - a
        out["other"] = max(0.0, (end - start) - sum(v for k, v in out.items() if k != "other"))
        return out


@contextlib.contextmanager
def phases() -> Iterator[PhaseClock]:
    """Wrap the methods of every phase on the classes that define them (restored on exit)."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from transformers import Trainer
    from transformers.trainer_callback import CallbackHandler
    from trl import GRPOTrainer as TRLGRPOTrainer

    from posttrain.training import grpo_trainer

    clock = PhaseClock()
    targets: list[tuple[type, str, Callable[..., str]]] = []
    for cls in grpo_trainer.GRPOTrainer.__mro__:
        if cls is TRLGRPOTrainer or cls.__module__.startswith("posttrain."):
            for method, name in (("_generate_single_turn", "generation"), ("_calculate_rewards", "reward scoring"),
                                 ("compute_loss", "training forward"), ("log", "logging")):
                if method in vars(cls):
                    targets.append((cls, method, lambda *a, _n=name, **k: _n))
    targets += [
        (TRLGRPOTrainer, "_get_per_token_logps_and_entropies",
         lambda self, model, *a, **k: "reference forward" if model is getattr(self, "ref_model", None) else ""),
        (Accelerator, "backward", lambda *a, **k: "backward"),
        (AcceleratedOptimizer, "step", lambda *a, **k: "optimizer"),
        (Trainer, "log", lambda *a, **k: "logging"),
        (CallbackHandler, "on_step_end", lambda *a, **k: "step-end callbacks"),
    ]
    originals = [(cls, method, vars(cls)[method]) for cls, method, _ in targets]
    for cls, method, which in targets:
        setattr(cls, method, _timed(clock, vars(cls)[method], which))
    try:
        yield clock
    finally:
        for cls, method, fn in originals:
            setattr(cls, method, fn)


def _timed(clock: PhaseClock, fn: Callable[..., Any], which: Callable[..., str]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        name = which(*args, **kwargs)
        if not name:
            return fn(*args, **kwargs)
        with clock.phase(name):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------------
# The two GRPO runs


def grpo_stage(run_dir: Path, sizes: dict[str, int]) -> dict[str, Any]:
    """The tiny recipe's GRPO stage, reading the SFT model, the reward model and the prompts of `run_dir`."""
    stage = next(s for s in yaml.safe_load(RECIPE.read_text())["stages"] if s["kind"] == "grpo")
    stage = {**stage, "model": str(run_dir / "sft" / "model"), "data": str(run_dir / "distill" / "prompts.jsonl")}
    stage["rewards"] = [{**r, "kwargs": {**r["kwargs"], "model": str(run_dir / "reward_model" / "model")}}
                        if r["name"] == "reward_model" else r for r in stage["rewards"]]
    stage["trl"] = {**stage["trl"], "max_steps": sizes["warmup"] + sizes["timed"], "save_strategy": "no",
                    "logging_steps": sizes["logging"], "report_to": "none",
                    "per_device_train_batch_size": sizes["prompts"] * sizes["generations"],
                    "num_generations": sizes["generations"], "max_completion_length": sizes["length"]}
    return stage


def parsed(out: Path, run_dir: Path, sizes: dict[str, int], seed: int) -> Any:
    from posttrain.recipe import parse_recipe
    from posttrain.stages import KINDS

    raw = {"output_dir": str(out), "seed": seed, "model": {"name_or_path": str(run_dir / "sft" / "model")},
           "stages": [grpo_stage(run_dir, sizes)]}
    return parse_recipe(yaml.safe_dump(raw), source="<benchmark grpo_step>", kinds=KINDS)


def run_ours(out: Path, run_dir: Path, sizes: dict[str, int], seed: int) -> None:
    from posttrain.stages import KINDS
    from posttrain.stages.base import StageContext

    recipe = parsed(out, run_dir, sizes, seed)
    ctx = StageContext(recipe, recipe.stage("grpo"), out, str(run_dir / "sft" / "model"),
                       logging.getLogger("posttrain.grpo"))
    KINDS.get("grpo").run(ctx)


def run_raw(out: Path, run_dir: Path, sizes: dict[str, int], seed: int) -> None:
    """TRL's GRPOTrainer built directly: the same model, prompts, rewards and weights, TRL config."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from posttrain.core.run_folder import read_jsonl
    from posttrain.recipe import build_trl_config
    from rewards.registry import get_reward

    stage = parsed(out, run_dir, sizes, seed).stage("grpo")
    path = run_dir / "sft" / "model"
    args = build_trl_config(stage, out / "checkpoints", use_vllm=False, seed=seed)
    rewards = [get_reward(r.name, **r.kwargs) for r in stage.rewards]
    dataset = datasets.Dataset.from_list([{"prompt": r["prompt"], "solution": r["solution"]}
                                          for r in read_jsonl(run_dir / "distill" / "prompts.jsonl")])
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, reward_funcs=rewards,
                          train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(path,
                                                                                                padding_side="left"))
    trainer.train()


METHODS: dict[str, Callable[[Path, Path, dict[str, int], int], None]] = {"ours": run_ours, "raw TRL": run_raw}


def measure_steps(run_dir: Path, root: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    """Both methods, `repeats` runs each in ABBA order: per run, the mean step and its phases."""
    from benchmarks.trainer_overhead import quiet, step_clock

    names = list(METHODS)
    order = [n for i in range(sizes["repeats"]) for n in (names if i % 2 == 0 else names[::-1])]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i, name in enumerate(order):
        out = root / f"grpo-{i}-{name.replace(' ', '_')}"
        with quiet(), phases() as clock, step_clock() as stamps, contextlib.redirect_stdout(io.StringIO()):
            METHODS[name](out, run_dir, sizes, seed)
        steps = [clock.split(a, b) for a, b in zip(stamps[sizes["warmup"] - 1:-1], stamps[sizes["warmup"]:],
                                                    strict=True)]
        if len(stamps) != sizes["warmup"] + sizes["timed"]:
            raise RuntimeError(f"{name}: {len(stamps)} optimizer steps, expected {sizes['warmup'] + sizes['timed']}")
        mean = {p: statistics.fmean(s[p] for s in steps) for p in PHASES}
        runs[name].append({"step_s": sum(mean.values()), "phases_s": mean})
    return {name: min(r, key=lambda x: x["step_s"]) | {"runs_step_s": [round(x["step_s"], 4) for x in r]}
            for name, r in runs.items()}


# --------------------------------------------------------------------------------------------------
# Rollouts of the SFT model


def rollouts(run_dir: Path, prompts: int, n: int, length: int, repeats: int, seed: int) -> dict[str, Any]:
    """Tokens/s of the hf backend and of `model.generate` on the same prompts, ABBA, median call."""
    import torch

    from data_pipelines.tasks.arithmetic import eval_prompts
    from posttrain.core.generation import GenerationSpec, HFGenerator, SamplingParams
    from posttrain.core.models import load_causal_lm, load_tokenizer

    path = str(run_dir / "sft" / "model")
    model = load_causal_lm(path).eval()
    model.config.use_cache = True
    tok = load_tokenizer(path)
    texts = [r["prompt"] for r in eval_prompts(prompts, seed + 1000)]
    ours = HFGenerator(model, tok, GenerationSpec(backend="hf", batch_size=prompts * n))
    enc = tok(texts, padding=True, return_tensors="pt")
    eos = ours._eos_ids()

    def backend(i: int) -> int:
        ours.generate(texts, n, SamplingParams(temperature=1.0, max_new_tokens=length, seed=seed + i))
        return sum(sum(row) for row in ours.last_lengths)

    def generate(i: int) -> int:
        torch.manual_seed(seed + i)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, top_k=0, temperature=1.0, max_new_tokens=length,
                                 num_return_sequences=n, pad_token_id=tok.pad_token_id, eos_token_id=eos)
        return sum(len(r) for r in ours._until_eos(out[:, enc["input_ids"].shape[1]:].tolist()))

    calls = {"ours": backend, "reference": generate}
    for call in calls.values():
        call(0)
    rates: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(repeats):
        for name in list(calls) if i % 2 == 0 else list(calls)[::-1]:
            start = time.perf_counter()
            tokens = calls[name](i + 1)
            rates[name].append(tokens / (time.perf_counter() - start))
    return {k: {"tokens_per_s": statistics.median(v), "per_call": [round(x) for x in v]} for k, v in rates.items()}


# --------------------------------------------------------------------------------------------------


FULL = {"prompts": 16, "generations": 8, "length": 48, "warmup": 2, "timed": 10, "logging": 5, "repeats": 2,
        "rollout_repeats": 6}
QUICK = {"prompts": 2, "generations": 4, "length": 12, "warmup": 1, "timed": 2, "logging": 1, "repeats": 1,
         "rollout_repeats": 2}


def trained_run(quick: bool, run_dir: str | None = None) -> Path:
    """A run folder with the tiny recipe's distill, SFT and reward-model stages done."""
    if run_dir:
        return Path(run_dir)
    out = TRAIN_DIR.with_name(TRAIN_DIR.name + "-quick") if quick else TRAIN_DIR
    return recipe_stages(out, ("distill", "sft", "reward_model"), QUICK_TRAINING if quick else ())


def run(quick: bool = False, run_dir: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Train (or reuse) the recipe's SFT and reward models, then measure the GRPO step and the rollouts."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sizes = QUICK if quick else FULL
    folder = trained_run(quick, run_dir)
    with one_thread(), tempfile.TemporaryDirectory(prefix="bench-grpo-step-") as tmp:
        steps = measure_steps(folder, Path(tmp), sizes, seed)
        speed = rollouts(folder, sizes["prompts"], sizes["generations"], sizes["length"], sizes["rollout_repeats"],
                         seed)
    ours, raw = steps["ours"], steps["raw TRL"]
    what = (f"{sizes['prompts']} prompts x {sizes['generations']} completions of up to {sizes['length']} tokens "
            f"from the tiny recipe's SFT model, the recipe's GRPO stage (math + format + reward model, KL to SFT); "
            f"mean of steps {sizes['warmup'] + 1}-{sizes['warmup'] + sizes['timed']}, better of {sizes['repeats']} "
            f"run(s) each (ABBA); torch on 1 thread")
    split = ", ".join(f"{p} {ours['phases_s'][p]:.3f}" for p in PHASES)
    rows: list[dict[str, Any]] = [
        {"name": "GRPO step: our stage vs raw TRL GRPOTrainer", "ours": round(ours["step_s"], 4),
         "reference": round(raw["step_s"], 4), "unit": "s/step", "note": f"{what}; ours: {split}"}]
    for phase in PHASES:
        rows.append({"name": f"GRPO step, {phase}", "ours": round(ours["phases_s"][phase], 4),
                     "reference": round(raw["phases_s"][phase], 4), "unit": "s/step",
                     "note": f"share of our step {ours['phases_s'][phase] / ours['step_s']:.0%}, of raw TRL's "
                             f"{raw['phases_s'][phase] / raw['step_s']:.0%}"})
    rows.append({"name": "hf backend vs generate, SFT model's GRPO rollouts",
                 "ours": round(speed["ours"]["tokens_per_s"], 1),
                 "reference": round(speed["reference"]["tokens_per_s"], 1), "unit": "tokens/s",
                 "note": f"{sizes['prompts']} held-out prompts x {sizes['generations']} at T=1, up to "
                         f"{sizes['length']} new tokens, one batch; median of {sizes['rollout_repeats']} calls each "
                         f"(ABBA); the decode loop vs model.generate; torch on 1 thread"})
    return {"rows": rows, "params": {**sizes, "seed": seed, "run_dir": str(folder), "torch_threads": 1},
            "details": {"steps": steps, "rollouts": speed}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and briefly trained models: a smoke test")
    parser.add_argument("--run-dir", help="a run folder with the tiny recipe's distill, sft and reward_model done")
    args = parser.parse_args()
    result = run(quick=args.quick, run_dir=args.run_dir)
    print_result(result, width=52)


if __name__ == "__main__":
    main()
