"""What running tool calls in the sandbox adds to a GRPO step, against the same step with the calls answered in
process, on a tiny DeepSeek-V3 that calls a python tool.

Ours is posttrain's GRPOTrainer with the sandbox tool (`rewards/sandbox/tool.py`, as the grpo stage builds it:
`as_function(SandboxTool)`, each call in the thread's warm sandbox, fresh processes, emptied /tmp). The reference
is the same trainer, model, prompts, seed and config with a plain Python function as the tool, which answers
`print(A*B)` with the same text the sandbox prints, without running anything: the rollouts are the same, so the
difference is what the sandbox costs. A third row gives the share of the step spent inside tool calls (the
trainer's own `tools/seconds` against its `step_time`). The issue's goal: tool calls add at most 25 % to GRPO's
step time at the tiny scale.

The model is trained first (plain PyTorch, under a minute) to call the tool on the benchmark's prompts, so that
every rollout makes a call. Runs alternate ours / reference / reference / ours (ABBA); each reports the mean step
time after the warm-up steps of its better run. torch on one thread.

    python -m benchmarks.tool_overhead [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import fit_conversations, one_thread


@dataclass(frozen=True)
class Sizes:
    prompts: int  # distinct prompts the model learns to call the tool on
    train_steps: int
    layers: int  # of the tiny model
    per_step: int  # prompts per GRPO step
    generations: int
    warmup: int
    timed: int
    repeats: int


FULL = Sizes(prompts=16, train_steps=150, layers=2, per_step=4, generations=8, warmup=1, timed=5, repeats=2)
QUICK = Sizes(prompts=2, train_steps=120, layers=2, per_step=2, generations=4, warmup=1, timed=2, repeats=1)


def build_model(root: Path, sizes: Sizes) -> tuple[Path, list[tuple[int, int]]]:
    """A tiny DeepSeek-V3 trained to call `python` with `print(a*b)` on each prompt, then answer from the output."""
    from data_pipelines.tasks.multiplication import corpus, final_turn, prompt_text, tool_call_turn, train_prompts
    from posttrain.core.tiny import build_tiny_model, train_tokenizer

    pairs = [tuple(map(int, re.findall(r"\d+", r["prompt"]))) for r in train_prompts(sizes.prompts, seed=7)]
    tokenizer = train_tokenizer(corpus(500), 512, tool_calls=True)
    model = build_tiny_model(tokenizer, {"num_hidden_layers": sizes.layers}, seed=0)
    conversations = [[{"role": "user", "content": prompt_text(a, b)}, tool_call_turn(a, b),
                      {"role": "tool", "name": "python", "content": f"{a * b}\n"},
                      {"role": "assistant", "content": final_turn(str(a * b))}] for a, b in pairs]
    fit_conversations(model, tokenizer, conversations, sizes.train_steps)
    out = root / "tool_model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, pairs  # type: ignore[return-value]


def in_process(code: str) -> str:
    """Run a Python program and return what it printed.

    Args:
        code: the complete python program to run
    """
    found = re.fullmatch(r"print\((\d+)\*(\d+)\)", code.strip())
    return f"{int(found.group(1)) * int(found.group(2))}\n" if found else "[tool error: not a product]"


def train(model_dir: Path, pairs: list[tuple[int, int]], out: Path, sizes: Sizes, sandbox: bool) -> dict[str, Any]:
    """One GRPO run; (steady step times, the trainer's log)."""
    from datasets import Dataset
    from trl import GRPOConfig

    from benchmarks.trainer_overhead import quiet, steady_step_times, step_clock
    from posttrain.core.models import load_causal_lm, load_tokenizer
    from posttrain.core.tool_calls import control_markers, enable_tool_calls
    from posttrain.training.grpo_trainer import GRPOTrainer
    from posttrain.training.tools import as_function
    from rewards import get_reward
    from rewards.sandbox.tool import SandboxTool

    tokenizer = enable_tool_calls(load_tokenizer(str(model_dir), padding_side="left"))
    steps = sizes.warmup + sizes.timed
    rows = [{"prompt": [{"role": "user", "content": f"Compute {a}*{b}."}], "solution": str(a * b)} for a, b in pairs]
    data = Dataset.from_list((rows * (1 + steps * sizes.per_step // len(rows)))[:steps * sizes.per_step])
    args = GRPOConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=sizes.per_step *
                      sizes.generations, num_generations=sizes.generations, max_completion_length=80,
                      temperature=1.0, learning_rate=1e-5, beta=0.0, report_to=[], save_strategy="no",
                      logging_steps=1, use_cpu=True, bf16=False, seed=0, max_tool_calling_iterations=1,
                      disable_tqdm=True)
    tool = SandboxTool("python", timeout_s=5.0, max_output_chars=200) if sandbox else None
    function = as_function(tool, control_markers(tokenizer)) if tool else in_process
    trainer = GRPOTrainer(model=load_causal_lm(str(model_dir)), args=args, processing_class=tokenizer,
                          reward_funcs=[get_reward("math")], train_dataset=data, tools=[function])
    if tool is not None:
        trainer.setup_tool_metrics([tool])
    with step_clock() as stamps, contextlib.redirect_stdout(io.StringIO()), quiet():
        trainer.train()
    if tool is not None:
        tool.close()
    logged = [r for r in trainer.state.log_history if "tools/call_frequency" in r]
    return {"times": steady_step_times(stamps, sizes.warmup), "log": logged}


def run(quick: bool = False) -> dict[str, Any]:
    from rewards.sandbox.bwrap import SandboxUnavailable

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    sizes = QUICK if quick else FULL
    try:
        from rewards.sandbox import default_sandbox

        default_sandbox().check()
    except SandboxUnavailable as exc:
        return {"skipped": f"no sandbox here: {exc}"}
    runs: dict[str, list[dict[str, Any]]] = {"sandbox": [], "in process": []}
    with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp, one_thread():
        root = Path(tmp)
        started = time.perf_counter()
        model_dir, pairs = build_model(root, sizes)
        build_s = time.perf_counter() - started
        order = [n for i in range(sizes.repeats) for n in (("sandbox", "in process") if i % 2 == 0
                                                            else ("in process", "sandbox"))]
        for i, name in enumerate(order):
            runs[name].append(train(model_dir, pairs, root / f"run-{i}", sizes, sandbox=name == "sandbox"))
    best = {name: min(statistics.fmean(r["times"]) for r in rs) for name, rs in runs.items()}
    log = [row for r in runs["sandbox"] for row in r["log"]]
    calls = statistics.fmean(row["tools/call_frequency"] for row in log) if log else None
    share = [row["tools/seconds"] / row["step_time"] for row in log if row.get("step_time") and "tools/seconds" in row]
    what = (f"{sizes.per_step} prompts x {sizes.generations} completions, {calls or 0:.2f} calls per completion, "
            f"tiny DeepSeek-V3 trained to call the tool; better of {sizes.repeats} run(s) each, ABBA, torch 1 thread")
    rows = [{"name": "GRPO step, tool calls in the sandbox vs answered in process", "ours": round(best["sandbox"], 4),
             "reference": round(best["in process"], 4), "unit": "s/step", "note": what},
            {"name": "GRPO step: share of time inside tool calls (sandbox)",
             "ours": round(statistics.fmean(share), 4) if share else None, "unit": "share of step",
             "higher_is_better": False, "note": "the trainer's tools/seconds over its step_time, every logged step"}]
    params = {**asdict(sizes), "model_build_s": round(build_s, 1), "calls_per_completion": calls}
    return {"rows": rows, "params": params,
            "details": {name: [{"mean_s": statistics.fmean(r["times"]), "steps": len(r["times"])} for r in rs]
                        for name, rs in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    result = run(quick=parser.parse_args().quick)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
