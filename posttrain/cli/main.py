"""`posttrain` command line: validate, run, report, eval, and the subcommands other packages add.

A package adds a subcommand by listing `module` in `_SUBCOMMANDS`; the module defines
`add_parser(subparsers)` which registers a parser whose `func(args) -> int` runs it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from posttrain.core.errors import PosttrainError, RecipeError
from posttrain.core.threads import wait_for_machine

_SUBCOMMANDS = ("posttrain.cli.eval", "rewards.cli", "posttrain.launch.rollout_server")


def main(argv: list[str] | None = None) -> int:
    # Libraries' deprecation chatter (TRL configs built while validating) is not the user's business.
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()  # imports no torch
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if args.func not in (cmd_validate, cmd_report):  # commands that compute: watch the machine before torch starts
        wait_for_machine()  # posttrain/core/threads.py says why
    try:
        return int(args.func(args) or 0)
    except RecipeError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 2
    except PosttrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("validate", help="check a recipe (and its --quick variant); exit 2 with every problem found. "
                                        "It takes run's options: `posttrain validate ARGS` checks `posttrain run ARGS`")
    _add_run_options(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run a recipe's stages (finished ones are skipped, interrupted ones resume)")
    _add_run_options(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="rebuild DIR/report.md and DIR/plots/ from a run's logs")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)

    for module_name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that part of posttrain is not installed
            raise
        module.add_parser(sub)
    return parser


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.add_argument("--output-dir", help="override the recipe's output_dir")
    p.add_argument("--stages", help="comma-separated stage names to run (default: all)")
    p.add_argument("--quick", action="store_true", help="apply the recipe's `quick:` overrides (a CI-sized run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value: stages.<name>.<key>=V or <key>=V (repeatable)")


def _only(recipe: Any, stages: str | None) -> list[str] | None:
    """`--stages a,b` as a list, every name checked against the recipe (None: all stages)."""
    only = [s.strip() for s in stages.split(",") if s.strip()] if stages else None
    unknown = sorted(set(only or ()) - set(recipe.stage_names()))
    if unknown:
        raise PosttrainError(f"--stages: no stage named {', '.join(unknown)} "
                             f"(stages: {', '.join(recipe.stage_names())})")
    return only


def cmd_validate(args: argparse.Namespace) -> int:
    from posttrain.recipe import load_recipe
    from posttrain.stages import KINDS

    notes: list[str] = []
    recipe = load_recipe(args.recipe, args.overrides, output_dir=args.output_dir, quick=args.quick, kinds=KINDS,
                         hub=True, notes=notes)
    only = _only(recipe, args.stages)
    has_quick = not args.quick and recipe.quick and load_recipe(args.recipe, args.overrides, quick=True, kinds=KINDS)
    what = " (--quick)" if args.quick else " and its --quick variant" if has_quick else ""
    stages = only or recipe.stage_names()
    print(f"{args.recipe}{what}: ok ({len(stages)} stages: {', '.join(stages)})")
    for note in notes:
        print(note if note.startswith("warning:") else f"note: {note}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from posttrain.core.log import setup_logging
    from posttrain.core.run_folder import prepare_run_dir, user_os_errors
    from posttrain.launch.accelerate import follow, follower_rank
    from posttrain.recipe import load_recipe
    from posttrain.run.lock import run_lock
    from posttrain.run.runner import run_recipe
    from posttrain.stages import KINDS

    notes: list[str] = []
    recipe = load_recipe(args.recipe, args.overrides, output_dir=args.output_dir, quick=args.quick, kinds=KINDS,
                         notes=notes)
    out = Path(recipe.output_dir)
    only = _only(recipe, args.stages)
    if follower_rank(recipe, only) > 0:  # another machine of a multi-machine stage: machine 0 runs the recipe
        setup_logging(None, logging.DEBUG if args.verbose else logging.INFO)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return follow(recipe, only)
    prepare_run_dir(out)
    # Locked before anything is written there (the log too): a second run refuses at once.
    with user_os_errors(out), run_lock(out):
        setup_logging(out, logging.DEBUG if args.verbose else logging.INFO)
        for note in notes:
            if note.startswith("warning:"):
                logging.getLogger("posttrain.recipe").warning(note.removeprefix("warning: "))
        signal.signal(signal.SIGTERM, _raise_interrupt)
        report = run_recipe(recipe, only)
    failed = [name for name, entry in report["stages"].items() if entry["status"] == "failed"]
    print(f"report: {out / 'report.md'} ({out / 'report.json'})")
    if failed:
        print(f"failed stages: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from posttrain.report import write_report
    from posttrain.stages import KINDS

    path = write_report(Path(args.dir), kinds=KINDS)
    print(f"report: {path}")
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM behaves like Ctrl-C: stages stop at a resumable point."""
    raise KeyboardInterrupt

