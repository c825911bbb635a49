"""`make bench`: run every benchmark module, print one table of ours vs reference, write JSON.

    python -m benchmarks.run [--quick] [--only NAME[,NAME]] [--with-demo] [--output FILE]

Each benchmark runs in its own process (a fresh interpreter: no torch thread settings, imports or
worker pools leak from one into the next) under a time limit, so one that hangs or crashes costs
its own row, not the table. Modules not written yet are skipped with a note. Results go to
benchmarks/results/latest.json (and latest.md, the table in Markdown for the README).
The return convention of `run(quick)` is documented in benchmarks/__init__.py and README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import inspect
import json
import math
import os
import pkgutil
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The suite, in the order it runs and prints; other modules found in the package run after these.
KNOWN = ("math_reward", "sandbox", "generation", "trainer_overhead", "grpo_step", "thread_layout", "demo")
NOT_BENCHMARKS = {"run", "gpu_check"}  # gpu_check: `make gpu-check`, a check, not a benchmark
#: Per-benchmark time limits (s). A fresh `make demo` gets its own, longer one.
DEFAULT_TIMEOUT_S = 480
DEMO_FRESH_TIMEOUT_S = 1800
#: Benchmarks that train their models with the tiny recipe the first time (runs/bench-*/, reused afterwards).
TRAINS_FIRST = ("mtp", "grpo_step", "thread_layout")
TRAINING_TIMEOUT_S = 1500
_ROW_KEYS = {"name", "ours", "reference", "unit", "higher_is_better", "ratio", "note"}
_TIME_UNITS = {"s", "ms", "us", "µs", "min", "h", "s/step", "ms/step", "s/row"}


class BadResult(ValueError):
    """A benchmark returned something that does not follow the convention."""


# --------------------------------------------------------------------------------------------------
# Discovery and the result convention


def discover(package: str = "benchmarks") -> tuple[list[str], list[str]]:
    """(present, missing): benchmark modules of `package` in run order, and KNOWN ones not written yet."""
    pkg = importlib.import_module(package)
    found = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")} - NOT_BENCHMARKS
    present = [n for n in KNOWN if n in found] + sorted(found - set(KNOWN))
    return present, [n for n in KNOWN if n not in found]


def normalise(name: str, result: Any) -> dict[str, Any]:
    """Check a benchmark's return value and fill in `ratio`, `higher_is_better`, `reference`, `note`."""
    where = f"benchmarks.{name}.run()"
    if not isinstance(result, dict):
        raise BadResult(f"{where} returned {type(result).__name__}; expected a dict with 'rows' "
                        f"(see benchmarks/README.md)")
    if "rows" not in result and isinstance(result.get("skipped"), str):
        return {"rows": [], **result}
    rows = result.get("rows")
    if not isinstance(rows, list):
        raise BadResult(f"{where}: 'rows' must be a list of row dicts, got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadResult(f"{where}: rows[{i}] is {type(row).__name__}, expected a dict")
        missing = [k for k in ("name", "ours", "unit") if k not in row]
        if missing:
            raise BadResult(f"{where}: rows[{i}] lacks {missing} (needs name, ours, unit)")
        unknown = sorted(set(row) - _ROW_KEYS)
        if unknown:
            raise BadResult(f"{where}: rows[{i}] has unknown key(s) {unknown}; allowed: {sorted(_ROW_KEYS)}")
        for key in ("ours", "reference", "ratio"):
            value = row.get(key)
            if value is not None and not _is_number(value):
                raise BadResult(f"{where}: rows[{i}].{key} must be a number or null, got {value!r}")
        unit = str(row["unit"])
        ours, reference = row["ours"], row.get("reference")
        ratio = row.get("ratio")
        if ratio is None and _is_number(ours) and _is_number(reference) and reference != 0:
            ratio = ours / reference
        out.append({"name": str(row["name"]), "ours": ours, "reference": reference, "unit": unit,
                    "higher_is_better": bool(row.get("higher_is_better", unit.endswith("/s"))),
                    "ratio": ratio, "note": str(row.get("note", ""))})
    return {**result, "rows": out}


def comparison(row: dict[str, Any]) -> str:
    """The ratio in words: '1.25× (25 % faster)', '1.10× (10 % more time)'."""
    ratio = row.get("ratio")
    if not _is_number(ratio) or not math.isfinite(ratio):
        return "—"
    pct = abs(ratio - 1) * 100
    unit = row.get("unit", "")
    if unit.endswith("/s"):
        word = "faster" if ratio >= 1 else "slower"
    elif unit in _TIME_UNITS:
        word = "more time" if ratio >= 1 else "less time"
    else:
        word = "higher" if ratio >= 1 else "lower"
    return f"{ratio:.2f}× ({pct:.0f} % {word})"


# --------------------------------------------------------------------------------------------------
# Running one benchmark in a child process


def run_isolated(name: str, package: str, quick: bool, kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run `package.name.run(quick, **kwargs)` in a fresh interpreter; never raises for the benchmark's faults."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.run", "--child", name, "--package", package,
               "--kwargs", json.dumps(kwargs), "--result", str(result_file)] + (["--quick"] if quick else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return {"status": "timeout", "seconds": round(time.perf_counter() - start, 1), "rows": [],
                    "error": f"did not finish within {timeout_s:.0f} s (raise it with --timeout)"}
        except KeyboardInterrupt:
            _stop(proc)
            raise
        seconds = round(time.perf_counter() - start, 1)
        try:
            data = json.loads(result_file.read_text())
        except (OSError, ValueError):
            return {"status": "error", "seconds": seconds, "rows": [],
                    "error": f"exited with code {code} without a result (see its output above)"}
    if "error" in data:
        return {"status": "error", "seconds": seconds, "rows": [], "error": data["error"]}
    status = "skipped" if data.get("skipped") and not data.get("rows") else "ok"
    return {"status": status, "seconds": seconds, **data}


def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the benchmark's whole process group, SIGKILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _child(name: str, package: str, quick: bool, kwargs: dict[str, Any], result_file: Path) -> int:
    """In the child: import the module, call run(), write the checked result (or the error) as JSON."""
    try:
        module = importlib.import_module(f"{package}.{name}")
        fn = getattr(module, "run", None)
        if not callable(fn):
            raise BadResult(f"{package}.{name} has no run(quick: bool = False) -> dict")
        accepted = inspect.signature(fn).parameters
        result = normalise(name, fn(quick=quick, **{k: v for k, v in kwargs.items() if k in accepted}))
        text = json.dumps(result, default=str)
    except Exception as exc:
        tb = traceback.format_exc(limit=-3)
        result_file.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "traceback": tb}))
        print(tb, file=sys.stderr)
        return 1
    result_file.write_text(text)
    return 0


# --------------------------------------------------------------------------------------------------
# Output


def table_rows(results: dict[str, dict[str, Any]], width: int = 70) -> list[list[str]]:
    """Header + one row per measure; notes and errors clipped to `width` characters (0: not clipped)."""
    header = ["benchmark", "measure", "ours", "reference", "unit", "ours vs reference", "note"]
    out = [header]
    for bench, res in results.items():
        if res["status"] in ("error", "timeout"):
            out.append([bench, res["status"].upper(), "—", "—", "", "", _clip(res.get("error", ""), width)])
            continue
        if res["status"] == "skipped":
            out.append([bench, "skipped", "—", "—", "", "", _clip(res.get("skipped", ""), width)])
            continue
        for row in res["rows"]:
            out.append([bench, row["name"], _fmt(row["ours"]), _fmt(row["reference"]), row["unit"], comparison(row),
                        _clip(row["note"], width)])
    return out


def format_table(results: dict[str, dict[str, Any]]) -> str:
    rows = table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = {2, 3}
    lines = []
    for j, r in enumerate(rows):
        cells = [c.rjust(w) if i in numeric and j else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    rows = table_rows(results, width=0)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures depend on: cores, load (the machine may be shared), versions, commit."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    with contextlib.suppress(OSError):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    for dist in ("torch", "transformers", "trl", "math-verify"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[dist] = version(dist)
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    return info


# --------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test of every benchmark")
    p.add_argument("--only", help="comma-separated benchmark names (default: all present)")
    p.add_argument("--with-demo", action="store_true",
                   help="run `make demo` afresh (minutes) instead of reading the last recorded demo run")
    p.add_argument("--demo-dir", help="recorded demo run to read (default: the tiny recipe's output_dir)")
    p.add_argument("--output", type=Path, help=f"JSON file to write (default: {RESULTS_DIR / 'latest.json'})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per benchmark")
    p.add_argument("--package", default="benchmarks", help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return _child(args.child, args.package, args.quick, json.loads(args.kwargs), args.result)

    present, missing = discover(args.package)
    selected = present
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in present and n not in KNOWN]
        if unknown:
            print(f"error: --only: no benchmark named {', '.join(unknown)} (available: {', '.join(present)})",
                  file=sys.stderr)
            return 2
        missing = [n for n in wanted if n not in present]
        selected = [n for n in present if n in wanted]
    for name in missing:
        print(f"note: benchmark {name!r} is not written yet (no {args.package}/{name}.py): skipped")

    demo_kwargs: dict[str, Any] = {"fresh": args.with_demo}
    if args.demo_dir:
        demo_kwargs["run_dir"] = args.demo_dir
    report: dict[str, Any] = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "quick": args.quick, "machine": machine(), "not_present": missing, "benchmarks": {}}
    start = time.perf_counter()
    interrupted = False
    try:
        for name in selected:
            kwargs = demo_kwargs if name == "demo" else {}
            timeout = max(args.timeout, DEMO_FRESH_TIMEOUT_S) if name == "demo" and args.with_demo else args.timeout
            if name in TRAINS_FIRST:
                timeout = max(timeout, TRAINING_TIMEOUT_S)
            print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
            res = run_isolated(name, args.package, args.quick, kwargs, timeout)
            report["benchmarks"][name] = res
            print(f"== {name}: {res['status']} in {res['seconds']:.1f} s"
                  + (f": {res['error']}" if res.get("error") else ""), flush=True)
    except KeyboardInterrupt:
        interrupted = True
    report["seconds"] = round(time.perf_counter() - start, 1)
    with contextlib.suppress(OSError):
        report["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)

    out = args.output or RESULTS_DIR / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(_markdown_report(report) + "\n")
    print()
    if report["benchmarks"]:
        print(format_table(report["benchmarks"]))
    else:
        print("no benchmark ran")
    load = report["machine"].get("load_avg_1m")
    print(f"\n{len(report['benchmarks'])} benchmark(s) in {report['seconds']:.0f} s on {report['machine']['cpus']} "
          f"CPU(s)" + (f", load average {load} at start" if load is not None else "") + f"; written to {out}")
    if interrupted:
        print("interrupted: the table has the benchmarks that finished", file=sys.stderr)
        return 130
    failed = [n for n, r in report["benchmarks"].items() if r["status"] in ("error", "timeout")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _markdown_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    head = (f"Benchmarks of {report['created']}{' (--quick)' if report['quick'] else ''}: {m.get('cpus')} CPU(s), "
            f"load average {m.get('load_avg_1m', '?')}, torch {m.get('torch', '?')}, "
            f"commit {m.get('git_commit', '?')}.")
    table = markdown_table(report["benchmarks"]) if report["benchmarks"] else "_no benchmark ran_"
    return f"{head}\n\n{table}"


def _fmt(value: Any) -> str:
    if not _is_number(value):
        return "—"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if not width or len(text) <= width else text[: width - 1] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


if __name__ == "__main__":
    sys.exit(main())
