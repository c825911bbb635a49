"""Multi-token prediction: rollout tokens/s and a GRPO step with and without drafting by the MTP module.

The model is the tiny recipe's, with one MTP depth (`model.tiny.num_nextn_predict_layers: 1`), after the
recipe's own distill and SFT stages with the MTP loss (`mtp: {weight: 0.3}`): trained once by this
benchmark (`posttrain run recipes/tiny-r1.yaml --stages distill,sft` into runs/bench-mtp/, torch on one
thread, ~10 min on a busy 2-core machine; a later run finds it done and reuses it), or given by `--model`.

Rollouts, same weights and prompts (held-out arithmetic prompts as the eval stage feeds them):
ours is the `hf` backend with `speculative: {mtp: true}` (the MTP module drafts one token a step, the
model verifies it in the same pass as its own next token), the reference the `hf` backend without it
(the same decode loop, one token a step). Cases: GRPO-style rollouts (16 prompts x 8 at T = 1, 48 new tokens, one
batch of 128), greedy evaluation (128 prompts, one batch) and a small batch (4 prompts x 4 at T = 1), where
per-step costs dominate as they do on a GPU. Completions stop at end-of-sequence as in
a run; tokens are counted exactly (new tokens up to and including end-of-sequence, from the token ids).
Calls alternate ours / reference / reference / ours after a warm-up; a method's figure is its median
call's tokens/s. Also reported: the draft's acceptance rate; greedy outputs must be identical; sampled
accuracy (math reward) of both methods' T = 1 samples, to see that drafting leaves it alone; and plain
transformers `generate` on the same prompts, as a control.

GRPO: a step of the GRPO stage (the tiny recipe's settings, 16 prompts x 8 completions, math + format
rewards) from the SFT model, with speculative rollouts and the MTP loss on the rollouts (λ = 0.1) against
plain rollouts without the MTP loss; steady-state step time (warm-up steps dropped), the better of two
ABBA runs each. torch runs on one thread throughout.

    python -m benchmarks.mtp [--quick] [--model PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from benchmarks import QUICK_TRAINING, ROOT, one_thread, print_result, recipe_stages
from benchmarks.generation import Case

#: Where the benchmark trains its model (inside `runs/`, ignored by git); reused when it is there.
TRAIN_DIR = ROOT / "runs" / "bench-mtp"
TRAIN_SETTINGS = ("model.tiny.num_nextn_predict_layers=1", "stages.sft.mtp.weight=0.3")


# --------------------------------------------------------------------------------------------------
# The model


def trained_model(quick: bool, model: str | None = None, train_dir: Path | None = None) -> Path:
    """The SFT model with an MTP module: `model`, or train it with the tiny recipe (reused when done)."""
    if model:
        return Path(model)
    out = train_dir or (TRAIN_DIR.with_name(TRAIN_DIR.name + "-quick") if quick else TRAIN_DIR)
    settings = (*TRAIN_SETTINGS, *(QUICK_TRAINING if quick else ()))
    return recipe_stages(out, ("distill", "sft"), settings) / "sft" / "model"


# --------------------------------------------------------------------------------------------------
# Rollouts


def prompt_rows(count: int, seed: int) -> list[dict[str, Any]]:
    from data_pipelines.tasks.arithmetic import eval_prompts

    return eval_prompts(count, seed + 1000)[:count]


class PlainTokens:
    """Counts the new tokens (not padding) of a model's `generate` calls, wrapping it as an instance attribute."""

    def __init__(self, model: Any, pad_token_id: int):
        self.model, self.pad, self.inner, self.tokens = model, pad_token_id, model.generate, 0
        model.generate = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        self.tokens += int((out[:, kwargs["input_ids"].shape[1]:] != self.pad).sum())
        return out

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            del self.model.generate


FULL_CASES = (Case("GRPO rollouts", 16, 8, 1.0, 48), Case("greedy eval", 128, 1, 0.0, 48),
              Case("small batch", 4, 4, 1.0, 48))
QUICK_CASES = (Case("GRPO rollouts", 4, 4, 1.0, 16), Case("greedy eval", 8, 1, 0.0, 16),
               Case("small batch", 2, 4, 1.0, 16))


def rollouts(model_path: Path, quick: bool, repeats: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each case with and without drafting (and plain transformers `generate`): rows and details."""
    from posttrain.core.generation import GenerationSpec, HFGenerator, SpeculativeSpec
    from posttrain.core.models import load_causal_lm, load_tokenizer
    from rewards.registry import get_reward

    model = load_causal_lm(str(model_path)).eval()
    model.config.use_cache = True
    tok = load_tokenizer(str(model_path))
    plain = HFGenerator(model, tok, GenerationSpec(backend="hf", batch_size=128))
    drafted = HFGenerator(model, tok, GenerationSpec(backend="hf", batch_size=128, speculative=SpeculativeSpec()))
    if not drafted.speculative:
        raise RuntimeError(f"{model_path} has no MTP module")
    counter = PlainTokens(model, tok.pad_token_id)
    rows, details = [], {}
    try:
        for case in QUICK_CASES if quick else FULL_CASES:
            detail = measure_case(case, plain, drafted, counter, get_reward("math"), repeats, seed)
            details[case.name] = detail
            rows.append({"name": f"MTP drafting, {case.name}", "ours": round(detail["ours"]["tokens_per_s"], 1),
                         "reference": round(detail["reference"]["tokens_per_s"], 1), "unit": "tokens/s",
                         "note": f"{case.label}; hf backend (the decode loop) with vs without speculative.mtp; draft "
                                 f"acceptance {detail['acceptance']:.3f}; transformers generate: "
                                 f"{detail['generate']['tokens_per_s']:.0f} tokens/s; median of {repeats} "
                                 f"calls (ABBA); tiny DeepSeek-V3 after SFT, torch on 1 thread"})
            rows.append({"name": f"MTP draft acceptance, {case.name}", "ours": detail["acceptance"],
                         "reference": None, "unit": "fraction", "higher_is_better": True,
                         "note": "share of drafted tokens the model kept (DeepSeek-V3 reports 0.85-0.9)"})
    finally:
        counter.close()
    return rows, details


def measure_case(case: Case, plain: Any, drafted: Any, counter: PlainTokens, math_reward: Any, repeats: int,
                 seed: int) -> dict[str, Any]:
    import torch

    from posttrain.core.generation import SamplingParams

    data = prompt_rows(case.prompts, seed)
    prompts = [r["prompt"] for r in data]
    tok = plain.tokenizer

    def backend(gen: Any) -> Callable[[int], tuple[list[list[str]], int]]:
        def call(i: int) -> tuple[list[list[str]], int]:
            sampling = SamplingParams(temperature=case.temperature, top_p=1.0, max_new_tokens=case.max_new_tokens,
                                      seed=seed + i)
            out = gen.generate(prompts, case.n, sampling)
            return out, sum(sum(row) for row in gen.last_lengths)
        return call

    enc = tok(prompts, padding=True, return_tensors="pt")

    def generate(i: int) -> tuple[list[list[str]], int]:
        torch.manual_seed(seed + i)
        before = counter.tokens
        sample = {"do_sample": True, "top_k": 0} if case.temperature else {"do_sample": False}
        with torch.inference_mode():
            plain.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 num_return_sequences=case.n if case.temperature else 1,
                                 max_new_tokens=case.max_new_tokens, pad_token_id=tok.pad_token_id, **sample)
        return [], counter.tokens - before

    before = drafted.draft_stats.drafted, drafted.draft_stats.accepted
    result = timed_calls({"ours": backend(drafted), "reference": backend(plain), "generate": generate}, repeats)
    first, samples = result.pop("first"), result.pop("samples")
    drafts = drafted.draft_stats.drafted - before[0]
    detail: dict[str, Any] = {**asdict(case), **result,
                              "acceptance": round((drafted.draft_stats.accepted - before[1]) / max(drafts, 1), 4)}
    if case.temperature == 0:
        detail["greedy_outputs_match"] = first["ours"] == first["reference"]
    else:
        detail["sampled_accuracy"] = {m: accuracy(math_reward, data, rows) for m, rows in samples.items()}
    return detail


def timed_calls(calls: dict[str, Callable[[int], tuple[list[list[str]], int]]], repeats: int) -> dict[str, Any]:
    """A warm-up call each, then `repeats` timed calls each in ABBA order: tokens/s of the median call."""
    names = list(calls)
    first = {name: calls[name](0)[0] for name in names}
    rates: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, int] = dict.fromkeys(names, 0)
    samples: dict[str, list[list[str]]] = {n: [] for n in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            out, count = calls[name](i + 1)
            seconds = time.perf_counter() - start
            rates[name].append(count / seconds)
            tokens[name] += count
            samples[name].append(out)
    result: dict[str, Any] = {n: {"tokens_per_s": statistics.median(rates[n]), "tokens": tokens[n],
                                  "per_call_tokens_per_s": [round(r, 1) for r in rates[n]]} for n in names}
    result["first"] = first
    result["samples"] = {n: [row for call in samples[n] for row in call] for n in ("ours", "reference")}
    return result


def accuracy(reward: Any, data: list[dict[str, Any]], calls: list[list[str]]) -> dict[str, float]:
    """Mean math reward of sampled completions (per call, rows in prompt order), with its standard error."""
    completions, solutions = [], []
    for i, row in enumerate(calls):
        completions += row
        solutions += [data[i % len(data)]["solution"]] * len(row)
    scores = [s or 0.0 for s in reward(completions, solution=solutions)]
    mean = sum(scores) / len(scores)
    return {"mean": round(mean, 4), "stderr": round(math.sqrt(mean * (1 - mean) / len(scores)), 4),
            "samples": len(scores)}


# --------------------------------------------------------------------------------------------------
# GRPO step time


def grpo_steps(model_path: Path, root: Path, quick: bool, repeats: int, seed: int) -> tuple[dict, dict]:
    from benchmarks.trainer_overhead import quiet, steady_step_times, step_clock
    from posttrain.recipe import parse_recipe
    from posttrain.stages import KINDS
    from posttrain.stages.base import StageContext

    prompts_n, generations, length, warmup, timed = (2, 4, 12, 1, 2) if quick else (16, 8, 48, 2, 6)
    data = root / "grpo.jsonl"
    with open(data, "w") as f:
        for r in prompt_rows(prompts_n * (warmup + timed), seed + 1):
            f.write(json.dumps({"prompt": r["prompt"], "solution": r["solution"]}) + "\n")
    trl = {"max_steps": warmup + timed, "per_device_train_batch_size": prompts_n * generations,
           "num_generations": generations, "max_completion_length": length, "temperature": 1.0,
           "learning_rate": 3e-5, "lr_scheduler_type": "constant_with_warmup", "warmup_steps": 2, "beta": 0.0,
           "logging_steps": 1, "save_strategy": "no", "seed": seed, "report_to": "none", "log_completions": False}
    variants = {"speculative": {"rollout": {"backend": "transformers", "speculative": {"mtp": True}},
                                "mtp": {"weight": 0.1}},
                "plain": {"rollout": {"backend": "transformers"}, "mtp": {"weight": 0.0}}}
    times: dict[str, list[float]] = {v: [] for v in variants}
    logged: dict[str, Any] = {}
    order = [v for i in range(repeats) for v in (list(variants) if i % 2 == 0 else list(variants)[::-1])]
    for i, name in enumerate(order):
        run_dir = root / f"grpo-{i}-{name}"
        stage = {"name": "grpo", "kind": "grpo", "model": str(model_path), "data": str(data), "loss": "dapo",
                 "rewards": [{"name": "math"}, {"name": "format", "weight": 0.1, "kwargs": {"strict": True}}],
                 **variants[name], "trl": trl}
        raw = {"output_dir": str(run_dir), "seed": seed, "model": {"name_or_path": str(model_path)}, "stages": [stage]}
        recipe = parse_recipe(yaml.safe_dump(raw), source="<benchmark mtp grpo>", kinds=KINDS)
        ctx = StageContext(recipe, recipe.stage("grpo"), run_dir, str(model_path), logging.getLogger("posttrain.grpo"))
        with quiet(), step_clock() as stamps, contextlib.redirect_stdout(io.StringIO()):
            KINDS.get("grpo").run(ctx)
        steps = steady_step_times(stamps, warmup)
        times[name].append(statistics.fmean(steps))
        rows = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
        acc = [r["mtp/acceptance"] for r in rows if "mtp/acceptance" in r]
        logged[name] = {"reward": [r.get("reward") for r in rows if "reward" in r],
                        **({"acceptance": round(statistics.fmean(acc), 4)} if acc else {})}
    best = {name: min(t) for name, t in times.items()}
    row = {"name": "MTP drafting, GRPO step", "ours": round(best["speculative"], 3),
           "reference": round(best["plain"], 3), "unit": "s/step",
           "note": f"{prompts_n} prompts x {generations} completions of up to {length} tokens from the SFT model, "
                   f"math + format rewards; speculative rollouts + MTP loss (λ 0.1) vs plain rollouts; mean of "
                   f"steps {warmup + 1}-{warmup + timed}, better of {repeats} run(s) each (ABBA); torch on 1 thread"}
    return row, {"step_s": {k: [round(x, 4) for x in v] for k, v in times.items()}, "logged": logged}


def run(quick: bool = False, model: str | None = None, seed: int = 0, repeats: int | None = None,
        train_dir: str | None = None) -> dict[str, Any]:
    """Train (or reuse) the SFT model, then measure rollouts and GRPO steps with and without MTP drafting."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    repeats = repeats or (1 if quick else 4)
    path = trained_model(quick, model, Path(train_dir) if train_dir else None)
    with one_thread(), tempfile.TemporaryDirectory(prefix="bench-mtp-") as tmp:
        rows, details = rollouts(path, quick, repeats, seed)
        grpo_row, details["GRPO step"] = grpo_steps(path, Path(tmp), quick, 1 if quick else 2, seed)
    rows.append(grpo_row)
    return {"rows": rows, "params": {"quick": quick, "repeats": repeats, "seed": seed, "model": str(path),
                                     "torch_threads": 1}, "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and a briefly trained model: a smoke test")
    parser.add_argument("--model", help="an SFT model with an MTP module (default: train one into runs/bench-mtp)")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args()
    result = run(quick=args.quick, model=args.model, repeats=args.repeats)
    print_result(result, width=40)


if __name__ == "__main__":
    main()
