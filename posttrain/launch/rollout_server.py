"""`posttrain rollout-server`: vLLM rollout workers for a recipe's GRPO stage (server mode).

GRPO's server mode keeps generation on GPUs of its own: this command starts vLLM's server the way
TRL 1.16 expects it (`vllm serve` with the NCCL weight-transfer engine, processed log-probs for the
importance-sampling correction, dev-mode endpoints; the command TRL's deprecated `trl vllm-serve` now
only wraps) on the model the GRPO stage will start from (an earlier stage's `model/`, the base model,
or a path), with the host and port of the stage's `rollout:` section, so the trainer finds it. The
trainer pushes its updated weights to the server after every step. With the stage's `rollout.speculative`, the
server drafts with the model's MTP module (`--speculative-config`), and the trainer updates the drafter too. A
typical 8-GPU layout is in docs/gpu.md.

    posttrain rollout-server RECIPE [--stage grpo] [--output-dir DIR] [--dry-run] [--vllm-args '...']
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from posttrain.core.errors import MissingDependencyError, RecipeError, StageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout-server", help="start vLLM rollout workers for a recipe's GRPO stage (GPU)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("recipe", nargs="?", help="the recipe whose GRPO stage the server feeds")
    p.add_argument("--stage", help="name of the GRPO stage (default: the recipe's first `grpo` stage)")
    p.add_argument("--output-dir", help="the run's output directory, if not the recipe's")
    p.add_argument("--model", help="serve this model instead of the stage's starting model")
    p.add_argument("--host", help="default: the stage's rollout.server_host")
    p.add_argument("--port", type=int, help="default: the stage's rollout.server_port")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--data-parallel-size", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the checkpoint's own config and tokenizer code run (default: the recipe's "
                        "model.trust_remote_code)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.add_argument("--vllm-args", default="", help="more `vllm serve` options, e.g. '--max-model-len 4096'")
    p.set_defaults(func=cmd_rollout_server)


#: The environment `vllm serve` needs for the trainer: the weight-update and prefix-cache endpoints are dev mode.
SERVER_ENV = {"VLLM_SERVER_DEV_MODE": "1"}
#: `vllm serve`'s option for speculative decoding (JSON), added for a stage with `rollout.speculative`.
SPECULATIVE = "--speculative-config"


def server_command(args: argparse.Namespace) -> list[str]:
    """The `vllm serve` command line for these arguments (model resolved from the recipe), built by TRL's own
    `build_command`, so the flags are those the pinned TRL's client relies on."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    from posttrain.stages.grpo import DEFAULT_PORT

    host, port, model, trust = args.host, args.port, args.model, args.trust_remote_code
    extra = shlex.split(args.vllm_args)
    if args.recipe:
        stage_model, stage_host, stage_port, stage_trust, speculative = _from_recipe(args)
        model, host, port, trust = model or stage_model, host or stage_host, port or stage_port, trust or stage_trust
        if speculative is not None and speculative.mtp and not any(a.startswith(SPECULATIVE) for a in extra):
            # vLLM's MTP drafter; the trainer keeps it on the policy (training/vllm_sync.py: sync_draft).
            extra += [SPECULATIVE, json.dumps({"method": "mtp", "num_speculative_tokens": speculative.num_tokens})]
    if not model:
        raise RecipeError(["rollout-server: give a RECIPE with a grpo stage, or --model PATH"])
    script = ScriptArguments(model=model, host=host or "127.0.0.1", port=port or DEFAULT_PORT,
                             tensor_parallel_size=args.tensor_parallel_size,
                             data_parallel_size=args.data_parallel_size,
                             gpu_memory_utilization=args.gpu_memory_utilization,
                             trust_remote_code=trust)
    return build_command(script, extra)


def cmd_rollout_server(args: argparse.Namespace) -> int:
    cmd = server_command(args)
    shown = " ".join(f"{k}={v}" for k, v in SERVER_ENV.items()) + " " + shlex.join(cmd)
    if args.dry_run:
        print(shown)
        return 0
    if importlib.util.find_spec("vllm") is None:
        raise MissingDependencyError("the rollout server needs vLLM (GPU machines): pip install 'posttrain[vllm]'. "
                                     "Without it, GRPO generates with transformers in the training process.")
    print(f"starting: {shown}", file=sys.stderr, flush=True)
    # The server owns the process from here: signals reach vLLM directly.
    os.execve(cmd[0], cmd, {**os.environ, **SERVER_ENV})


def _from_recipe(args: argparse.Namespace) -> tuple[str, str, int, bool, Any]:
    from posttrain.recipe import load_recipe
    from posttrain.run.base_model import base_model_ref
    from posttrain.stages import KINDS
    from posttrain.stages.base import resolve_model
    from posttrain.stages.grpo import Config as GRPOConfig

    # Only the GRPO stage's model matters here (often on another machine than the data): no file checks.
    recipe = load_recipe(args.recipe, output_dir=args.output_dir, kinds=KINDS, check=False)
    grpo = [s for s in recipe.stages if isinstance(s, GRPOConfig) and (args.stage in (None, s.name))]
    if not grpo:
        names = [s.name for s in recipe.stages if isinstance(s, GRPOConfig)]
        raise RecipeError([f"{args.recipe}: no grpo stage {args.stage or ''} (grpo stages: {names or 'none'})"])
    stage = grpo[0]
    run_dir = Path(recipe.output_dir)
    try:
        model = resolve_model(recipe, run_dir, base_model_ref(recipe, run_dir), stage.model,
                              f"the rollout server of stage {stage.name!r}")
    except StageError as exc:
        raise RecipeError([f"{args.recipe}: {exc}"]) from None
    rollout = stage.rollout
    return model, rollout.server_host, rollout.server_port, recipe.model.trust_remote_code, rollout.speculative
