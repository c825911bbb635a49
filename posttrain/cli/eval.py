"""`posttrain eval MODEL --benchmark NAME`: score a model on benchmark presets with one command, no recipe.

The command writes a recipe in memory (the model, one `eval` stage per benchmark, named after it) and runs
it through the runner, so it leaves the run folder a recipe leaves (`DIR/<benchmark>/samples.jsonl`,
`DIR/report.json`, `DIR/report.md`, `DIR/resolved_recipe.yaml`), a rerun skips what is done and an
interrupted one resumes. `--set stages.<benchmark>.KEY=VALUE` reaches any eval-stage option.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
from pathlib import Path
from typing import Any

import yaml

from posttrain.core.errors import PosttrainError

#: Sampling temperature when none is given: DeepSeek-R1's for its evaluations.
DEFAULT_TEMPERATURE = 0.6


def add_parser(sub: Any) -> None:
    from posttrain.eval_presets import benchmark_names

    p = sub.add_parser("eval", help="score a model on benchmark presets (math500, gsm8k, humaneval, ...), no recipe",
                       description=__doc__.splitlines()[0])
    p.add_argument("model", help="a hub name or a local model folder (e.g. runs/tiny-r1/grpo/model)")
    p.add_argument("--benchmark", action="append", required=True, metavar="NAME",
                   help=f"a preset: {', '.join(benchmark_names())} (repeatable, or comma-separated)")
    p.add_argument("--limit", type=int, help="evaluate the first N prompts of each benchmark")
    p.add_argument("--samples", type=int, default=4, help="sampled completions per prompt for pass@1 (default 4)")
    p.add_argument("--temperature", default=str(DEFAULT_TEMPERATURE), metavar="T[,T...]",
                   help=f"sampling temperature; several (0.6,1.0) give pass@1 at each and their mean; pass@1 "
                        f"reports the first (default {DEFAULT_TEMPERATURE}, DeepSeek-R1's)")
    p.add_argument("--max-new-tokens", type=int, default=2048, help="tokens per completion (default 2048)")
    p.add_argument("--output-dir", help="run folder (default runs/eval/<model name>)")
    p.add_argument("--data", help="a local file in the benchmark's hub shape, used instead of the hub set "
                                  "(one benchmark only)")
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="generation engine (default hf)")
    p.add_argument("--batch-size", type=int, default=64, help="hf: sequences per forward batch (default 64)")
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template to the prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the generated recipe, e.g. stages.humaneval.benchmark_options.style=complete")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_eval)


def benchmarks_of(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for item in args.benchmark for n in item.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def build_recipe(args: argparse.Namespace) -> Any:
    """The in-memory recipe: the model and one eval stage per benchmark (validated like any recipe)."""
    from posttrain.recipe import parse_recipe
    from posttrain.stages import KINDS

    names = benchmarks_of(args)
    if args.data and len(names) > 1:
        raise PosttrainError("--data replaces one benchmark's hub set: give a single --benchmark with it")
    try:
        temperatures = [float(t) for t in str(args.temperature).split(",") if t.strip()]
    except ValueError:
        raise PosttrainError(f"--temperature: expected numbers such as 0.6 or 0.6,1.0, got {args.temperature!r}") \
            from None
    stages = []
    for name in names:
        stage: dict[str, Any] = {
            "name": name, "kind": "eval", "benchmark": name, "samples": args.samples,
            "sampling": {"temperature": temperatures[0] if temperatures else DEFAULT_TEMPERATURE,
                         "max_new_tokens": args.max_new_tokens},
            "generation": {"backend": args.backend, "batch_size": args.batch_size, "chat": args.chat},
        }
        if len(temperatures) > 1:
            stage["temperatures"] = temperatures
        if args.limit is not None:
            stage["max_samples"] = args.limit
        if args.data:
            stage["data"] = args.data
        stages.append(stage)
    raw = {"output_dir": args.output_dir or default_output_dir(args.model), "seed": args.seed,
           "model": {"name_or_path": args.model}, "stages": stages}
    return parse_recipe(yaml.safe_dump(raw, sort_keys=False), source="posttrain eval", overrides=args.overrides,
                        kinds=KINDS)


def default_output_dir(model: str) -> str:
    """runs/eval/<model>: the model folder's name, or a hub name with `/` as `--` (runs/eval/org--name)."""
    path = Path(model)
    name = model.replace("/", "--") if not path.exists() else (path.name if path.name != "model" else
                                                                  f"{path.parent.name}-model")
    return str(Path("runs") / "eval" / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"))


def cmd_eval(args: argparse.Namespace) -> int:
    from posttrain.core.log import setup_logging
    from posttrain.run.runner import run_recipe

    recipe = build_recipe(args)
    out = Path(recipe.output_dir)
    setup_logging(out, logging.DEBUG if args.verbose else logging.INFO)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    report = run_recipe(recipe)
    for name, entry in report["stages"].items():
        print(f"{name}: {entry['status']}{_figures(entry)}")
    print(f"report: {out / 'report.md'} ({out / 'report.json'})")
    return 1 if any(e["status"] == "failed" for e in report["stages"].values()) else 0


def _figures(entry: dict[str, Any]) -> str:
    m = entry.get("metrics") or {}
    if entry.get("status") == "failed":
        return f": {m.get('error', '')}"
    shown = [f"{label} {100 * m[key]:.1f} %" for key, label in (("accuracy", "greedy"), ("pass@1", "pass@1"),
                                                                 ("pass@1/mean", "pass@1 mean over temperatures"))
             if isinstance(m.get(key), int | float)]
    if isinstance(m.get("response_length"), int | float):
        shown.append(f"{m['response_length']:.0f} tokens per sampled answer")
    if isinstance(m.get("prompts"), int):
        shown.append(f"{m['prompts']} prompts")
    return ": " + ", ".join(shown) if shown else ""


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

