"""`posttrain rewards list` and `posttrain rewards score`: the reward registry from the command line.

`score` reads JSON lines (`completion`, optional `prompt`, any other columns), calls each reward the
way TRL's GRPOTrainer would (`completions`, `prompts`, columns as keyword lists) in batches, and
writes each row back with `rewards` ({name: score or null}), `reward` (the weighted sum of the
non-null scores) and, where a reward failed on the row, `errors` ({name: message}). Rows are written
as they are scored; `--resume` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.core.errors import DataError, PluginError, PosttrainError
from rewards.protocol import NOT_COLUMNS

_OUTPUT_KEYS = ("rewards", "reward", "errors")
#: Names a reward call gives its own meaning (TRL's arguments): a data column with one of them is kept in the
#: output rows but never passed to a reward, where it would replace the argument (or collide with it).
RESERVED_COLUMNS = frozenset({"completions", "prompts", "completion_ids"}) | NOT_COLUMNS
#: Exit status when a reward failed on every row it was given (the rows are still written).
EXIT_ALL_FAILED = 1


def add_parser(subparsers: Any) -> None:
    """Register `posttrain rewards {list,score}`."""
    parser = subparsers.add_parser("rewards", help="list the rewards, or score completions with them")
    sub = parser.add_subparsers(metavar="ACTION")
    parser.set_defaults(func=lambda args: _help(parser))

    p = sub.add_parser("list", help="one line per reward: name and what it scores")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("score", help="score a JSON-lines file of completions with one or more rewards",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--reward", action="append", required=True, metavar="NAME[:WEIGHT]",
                   help="a built-in name, an entry point, or module:function; weight 1 by default (repeatable)")
    p.add_argument("--input", required=True, help="JSON lines with `completion` (text or chat list) per row")
    p.add_argument("--output", required=True, help="JSON lines: each input row plus rewards, reward, errors")
    p.add_argument("--reward-kwargs", action="append", default=[], metavar="NAME={json}",
                   help="options of one reward as a JSON object, e.g. overlong='{\"max_length\": 512, "
                        "\"cache_length\": 128}' (repeatable)")
    p.add_argument("--workers", type=int, help="processes for rewards that take `workers` (default: the cores)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per reward call (default 256)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in OUTPUT and score the rest")
    p.set_defaults(func=cmd_score)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_list(args: argparse.Namespace) -> int:
    from rewards.registry import list_rewards

    rows = list_rewards()
    width = max((len(name) for name, _ in rows), default=0)
    for name, doc in rows:
        print(f"{name:<{width}}  {doc}".rstrip())
    return 0


# ---------------------------------------------------------------- parsing the options


@dataclass
class RewardArg:
    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


def parse_reward_arg(text: str) -> RewardArg:
    """`NAME[:WEIGHT]`; NAME may itself contain `:` (`pkg.mod:fn:0.5`), a weight is the last part if it is a number.

    >>> parse_reward_arg("math:2"), parse_reward_arg("pkg.mod:fn")
    (RewardArg(name='math', weight=2.0, kwargs={}), RewardArg(name='pkg.mod:fn', weight=1.0, kwargs={}))
    """
    name, sep, tail = text.strip().rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            return RewardArg(text.strip())
        if not math.isfinite(weight):
            raise PluginError(f"--reward {text!r}: the weight must be a finite number")
        return RewardArg(name, weight)
    return RewardArg(text.strip())


def parse_rewards(specs: list[str], kwargs_specs: list[str]) -> list[RewardArg]:
    """The `--reward` list with each `--reward-kwargs NAME={json}` attached to its reward."""
    rewards = [parse_reward_arg(s) for s in specs]
    by_name = {r.name: r for r in rewards}
    if len(by_name) != len(rewards):
        raise PluginError(f"--reward: each reward may appear once, got {', '.join(r.name for r in rewards)}")
    for spec in kwargs_specs:
        name, sep, payload = spec.partition("=")
        if not sep or name.strip() not in by_name:
            raise PluginError(f"--reward-kwargs {spec!r}: expected NAME={{json}} with NAME one of the --reward "
                              f"names ({', '.join(by_name)})")
        try:
            options = json.loads(payload)
        except ValueError as exc:
            raise PluginError(f"--reward-kwargs {name}: not valid JSON ({exc}): {payload!r}") from None
        if not isinstance(options, dict):
            raise PluginError(f"--reward-kwargs {name}: expected a JSON object, got {type(options).__name__}")
        by_name[name.strip()].kwargs.update(options)
    return rewards


# ---------------------------------------------------------------- reading and writing rows


def read_rows(path: Path, report: Any) -> Iterator[dict[str, Any]]:
    """The valid rows of a JSON-lines file; a malformed line is reported (file:line: why) and skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                report(lineno, f"not valid JSON ({exc})")
                continue
            if not isinstance(row, dict):
                report(lineno, f"expected a JSON object, got {type(row).__name__}")
            elif "completion" not in row:
                report(lineno, "no `completion` key")
            else:
                yield row


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _kept_rows(path: Path) -> int:
    """Complete rows already in an output file; a half-written last line (a killed run) is cut off."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return data[:end].count(b"\n")


def passed_columns(keys: set[str], arg: RewardArg) -> tuple[dict[str, str], set[str]]:
    """({argument name: column} a reward gets, the columns it does not get): `prompt` goes as `prompts`, as TRL
    passes it; a column named like an argument of the call (`completions`, `trainer_state`, ...) or like one
    of the reward's own options (`--reward-kwargs`) is held back, so data can never replace an argument.

    >>> passed_columns({"prompt", "solution", "completions"}, RewardArg("math"))
    ({'prompts': 'prompt', 'solution': 'solution'}, {'completions'})
    """
    held = {k for k in keys if k in RESERVED_COLUMNS or k in arg.kwargs}
    return {("prompts" if k == "prompt" else k): k for k in sorted(keys - held)}, held


def score_batch(rows: list[dict[str, Any]], rewards: list[tuple[RewardArg, Any]],
                held_back: set[str] | None = None) -> list[dict[str, Any]]:
    """Score rows with every reward as GRPOTrainer calls them; return the rows with rewards/reward/errors.

    `held_back` collects the columns no reward was given (see `passed_columns`)."""
    from rewards.mix import RewardMix

    keys = {k for row in rows for k in row if k not in ("completion", *_OUTPUT_KEYS)}
    args = {arg.name: arg for arg, _ in rewards}

    def columns(name: str) -> dict[str, list[Any]]:
        names, held = passed_columns(keys, args[name])
        if held_back is not None:
            held_back.update(held)
        return {column: [row.get(k) for row in rows] for column, k in names.items()}

    scored = RewardMix([(arg.name, fn, arg.weight) for arg, fn in rewards]).score(
        [row["completion"] for row in rows], columns)
    totals = scored.totals()
    out = []
    for i, row in enumerate(rows):
        new = {k: v for k, v in row.items() if k not in _OUTPUT_KEYS}
        new["rewards"] = scored.row(i)
        new["reward"] = totals[i]
        failed = scored.row_errors(i)
        if failed:
            new["errors"] = failed
        out.append(new)
    return out


def cmd_score(args: argparse.Namespace) -> int:
    from rewards.registry import get_reward, takes_option

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        raise DataError(f"--input {src}: " + ("a directory, not a file" if src.is_dir() else "no such file"))
    if dst.is_dir():
        raise DataError(f"--output {dst} is a directory: give a file, e.g. {dst / 'scores.jsonl'}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise DataError(f"--output {dst} is the input file: write the scores to another file")
    if args.batch_size < 1:
        raise PosttrainError(f"--batch-size must be >= 1, got {args.batch_size}")
    specs = parse_rewards(args.reward, args.reward_kwargs)
    for spec in specs:
        if args.workers is not None and "workers" not in spec.kwargs and takes_option(spec.name, "workers"):
            spec.kwargs["workers"] = args.workers
    rewards = [(spec, get_reward(spec.name, **spec.kwargs)) for spec in specs]
    try:
        for _, fn in rewards:
            fn.setup()  # a reward model or judge that cannot load: one line naming its path, before any row
        return _score_file(args, src, dst, rewards)
    finally:
        for _, fn in rewards:
            fn.close()


def _score_file(args: argparse.Namespace, src: Path, dst: Path, rewards: list[tuple[RewardArg, Any]]) -> int:
    from tqdm import tqdm

    malformed: list[int] = []

    def report(lineno: int, why: str) -> None:
        malformed.append(lineno)
        tqdm.write(f"{src}:{lineno}: skipped: {why}", file=sys.stderr)

    written = 0
    stats: dict[str, list[float]] = {spec.name: [0.0, 0, 0] for spec, _ in rewards}  # sum, scored, null
    held_back: set[str] = set()
    try:
        skip = _kept_rows(dst) if args.resume else 0
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "a" if skip else "w", encoding="utf-8") as out, \
                tqdm(total=_count_lines(src), unit="row", desc="scoring", file=sys.stderr, disable=None) as bar:
            batch: list[dict[str, Any]] = []
            rows = read_rows(src, report)
            for index, row in enumerate(rows):
                if index < skip:
                    bar.update(1)
                    continue
                batch.append(row)
                if len(batch) >= args.batch_size:
                    written += _write(out, score_batch(batch, rewards, held_back), bar, stats)
                    batch = []
            if batch:
                written += _write(out, score_batch(batch, rewards, held_back), bar, stats)
    except OSError as exc:  # a folder in the way, read-only, disk full (a reward's own errors never get here)
        why = ("a file is in the way of a folder" if isinstance(exc, FileExistsError | NotADirectoryError)
               else exc.strerror or str(exc))
        raise DataError(f"{exc.filename or dst}: {why}"
                        + ("; run again with --resume to keep the rows written" if written else "")) from None
    if held_back:
        print(f"columns not passed to the rewards (their names are arguments of the reward call or options of a "
              f"reward; they are kept in the output): {', '.join(sorted(held_back))}", file=sys.stderr)
    _summary(rewards, stats, written, skip, malformed, src, dst)
    return _all_failed(rewards)


def _all_failed(rewards: list[tuple[RewardArg, Any]]) -> int:
    """EXIT_ALL_FAILED when some reward failed on every row it scored (a broken reward, not bad rows), else 0."""
    broken = [(arg, fn) for arg, fn in rewards if fn.rows and fn.error_count >= fn.rows]
    for arg, fn in broken:
        print(f"error: reward {arg.name} failed on all {fn.rows} rows; first error: {fn.first_error}",
              file=sys.stderr)
    return EXIT_ALL_FAILED if broken else 0


def _write(out: Any, rows: list[dict[str, Any]], bar: Any, stats: dict[str, list[float]]) -> int:
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        for name, score in row["rewards"].items():
            if score is None:
                stats[name][2] += 1
            else:
                stats[name][0] += score
                stats[name][1] += 1
    out.flush()
    bar.update(len(rows))
    return len(rows)


def _summary(rewards: list[tuple[RewardArg, Any]], stats: dict[str, list[float]], written: int, kept: int,
             malformed: list[int], src: Path, dst: Path) -> None:
    parts = [f"scored {written} rows into {dst}"]
    if kept:
        parts.append(f"{kept} kept from the interrupted run")
    if malformed:
        shown = ", ".join(map(str, malformed[:10])) + (", …" if len(malformed) > 10 else "")
        parts.append(f"{len(malformed)} malformed lines of {src} skipped (lines {shown})")
    print("; ".join(parts), file=sys.stderr)
    for arg, fn in rewards:
        total, scored, null = stats[arg.name]
        mean = f"{total / scored:.4g}" if scored else "n/a"
        noted = fn.error_count - getattr(fn, "failed_count", fn.error_count)
        print(f"  {arg.name} (weight {arg.weight:g}): mean {mean} over {int(scored)} rows, {int(null)} null, "
              f"{fn.error_count} failed" + (f" ({noted} of them scored, with the reason: an answer that could not be "
                                            "read, a timeout)" if noted else ""), file=sys.stderr)
