"""The benchmark harness, run as `make bench` runs it, on a package of real little benchmarks written here."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.run import BadResult, comparison, format_table, normalise

ROOT = Path(__file__).resolve().parents[2]

MODULES = {
    "__init__.py": "",
    # Sorting a list: sorted() vs a hand-written insertion sort, both measured here and now.
    "sorting.py": '''
import time

def _rate(fn, data, repeat):
    start = time.perf_counter()
    for _ in range(repeat):
        fn(list(data))
    return repeat / (time.perf_counter() - start)

def _insertion(xs):
    for i in range(1, len(xs)):
        j = i
        while j and xs[j - 1] > xs[j]:
            xs[j - 1], xs[j] = xs[j], xs[j - 1]
            j -= 1
    return xs

def run(quick: bool = False) -> dict:
    data = list(range(60, 0, -1))
    repeat = 20 if quick else 200
    ours, ref = _rate(sorted, data, repeat), _rate(_insertion, data, repeat)
    return {"rows": [{"name": "sort 60 ints", "ours": ours, "reference": ref, "unit": "sorts/s",
                      "note": "sorted() vs insertion sort"}],
            "params": {"quick": quick, "repeat": repeat}}
''',
    "boom.py": "def run(quick: bool = False) -> dict:\n    raise ValueError('broken on purpose')\n",
    "malformed.py": "def run(quick: bool = False) -> dict:\n    return {'rows': [{'name': 'x', 'ours': 1.0}]}\n",
    "nobwrap.py": "def run(quick: bool = False) -> dict:\n    return {'skipped': 'bubblewrap is not installed'}\n",
    # Starts a grandchild and hangs: the harness must stop both.
    "hang.py": '''
import os, subprocess, sys, time

def run(quick: bool = False) -> dict:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.environ["HANG_PID_FILE"], "w") as f:
        f.write(str(child.pid))
    time.sleep(120)
    return {"rows": []}
''',
    # Stands in for benchmarks/demo.py to show which options reach it.
    "demo.py": '''
def run(quick: bool = False, fresh: bool = False, run_dir: str | None = None) -> dict:
    return {"rows": [{"name": "options", "ours": float(fresh), "unit": "flag", "note": f"run_dir={run_dir}"}]}
''',
}


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    for name, text in MODULES.items():
        (pkg / name).write_text(text)
    return tmp_path


def bench(python: str, pythonpath: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{pythonpath}", "HANG_PID_FILE": str(pythonpath / "pid")}
    return subprocess.run([python, "-m", "benchmarks.run", "--package", "fakebench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_runs_everything_and_isolates_failures(python: str, package: Path) -> None:
    out = package / "out.json"
    proc = bench(python, package, "--quick", "--timeout", "8", "--with-demo", "--demo-dir", "somewhere",
                 "--output", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # boom, malformed and hang failed
    assert "failed: boom, hang, malformed" in proc.stderr

    report = json.loads(out.read_text())
    results = report["benchmarks"]
    # Known suite order first (demo), then the other modules by name.
    assert list(results) == ["demo", "boom", "hang", "malformed", "nobwrap", "sorting"]
    assert report["quick"] is True and report["machine"]["cpus"] == os.cpu_count()
    assert set(report["not_present"]) == {"math_reward", "sandbox", "generation", "trainer_overhead", "grpo_step",
                                          "thread_layout"}
    for name in report["not_present"]:
        assert f"note: benchmark {name!r} is not written yet" in proc.stdout

    assert results["boom"]["status"] == "error" and "ValueError: broken on purpose" in results["boom"]["error"]
    assert results["malformed"]["status"] == "error" and "lacks ['unit']" in results["malformed"]["error"]
    assert results["hang"]["status"] == "timeout"
    assert results["nobwrap"] == {**results["nobwrap"], "status": "skipped", "skipped": "bubblewrap is not installed"}
    assert results["demo"]["rows"][0]["ours"] == 1.0 and results["demo"]["rows"][0]["note"] == "run_dir=somewhere"

    (row,) = results["sorting"]["rows"]
    assert results["sorting"]["params"] == {"quick": True, "repeat": 20}
    assert row["ratio"] == pytest.approx(row["ours"] / row["reference"])
    assert row["higher_is_better"] is True  # a rate

    # The printed table has every benchmark, the figures and the ratio in words.
    table = proc.stdout[proc.stdout.index("benchmark  "):]
    assert "ours vs reference" in table.splitlines()[0]
    assert f"{row['ratio']:.2f}× (" in table and "faster)" in table
    for name in results:
        assert any(line.startswith(name) for line in table.splitlines()), name
    assert (package / "out.md").read_text().count("\n| ") == 1 + 6  # header + one line per benchmark

    # The hung benchmark's own child process was stopped with it.
    pid = int((package / "pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}/status").exists() else ""
        if "zombie" in status:
            break
        time.sleep(0.2)
    else:
        assert not Path(f"/proc/{pid}").exists(), "the benchmark's child survived the timeout"


def test_only_selects_and_unknown_names_are_an_error(python: str, package: Path) -> None:
    out = package / "only.json"
    proc = bench(python, package, "--quick", "--only", "sorting,math_reward", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(out.read_text())["benchmarks"]) == ["sorting"]
    assert "note: benchmark 'math_reward' is not written yet" in proc.stdout
    assert "note: benchmark 'sandbox'" not in proc.stdout

    proc = bench(python, package, "--only", "sortin", "--output", str(out))
    assert proc.returncode == 2
    assert "no benchmark named sortin" in proc.stderr and "sorting" in proc.stderr


def test_normalise_fills_ratio_and_direction() -> None:
    result = normalise("x", {"rows": [
        {"name": "rate", "ours": 150.0, "reference": 100.0, "unit": "rows/s"},
        {"name": "step", "ours": 1.2, "reference": 1.0, "unit": "s/step", "note": "overhead"},
        {"name": "given", "ours": 3.0, "reference": None, "unit": "s", "ratio": 0.5},
        {"name": "alone", "ours": None, "unit": "s"},
    ], "params": {"n": 1}})
    rate, step, given, alone = result["rows"]
    assert rate["ratio"] == 1.5 and rate["higher_is_better"] is True
    assert step["ratio"] == pytest.approx(1.2) and step["higher_is_better"] is False
    assert given["ratio"] == 0.5 and alone["ratio"] is None and alone["reference"] is None
    assert result["params"] == {"n": 1}
    assert comparison(rate) == "1.50× (50 % faster)"
    assert comparison(step) == "1.20× (20 % more time)"
    assert comparison(given) == "0.50× (50 % less time)"
    assert comparison(alone) == "—"
    table = format_table({"x": {"status": "ok", **result}})
    assert "1.50× (50 % faster)" in table and "overhead" in table


@pytest.mark.parametrize(("result", "message"), [
    ([1, 2], "returned list"),
    ({"rows": "no"}, "'rows' must be a list"),
    ({"rows": [{"name": "a", "ours": "fast", "unit": "s"}]}, "rows[0].ours must be a number"),
    ({"rows": [{"name": "a", "ours": 1, "unit": "s", "speed": 2}]}, "unknown key(s) ['speed']"),
])
def test_normalise_rejects_results_off_the_convention(result: object, message: str) -> None:
    with pytest.raises(BadResult) as info:
        normalise("x", result)
    assert message in str(info.value)

