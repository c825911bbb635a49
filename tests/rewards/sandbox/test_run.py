"""Ordinary programs through the real bubblewrap sandbox (`Sandbox.run`, `run_tests`); refusing to run without it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.sandbox import Limits, Sandbox, SandboxUnavailable, normalize_language
from tests.rewards.sandbox.helpers import (
    LIMITS,
    MARK,
    ROOT,
    c_program,
    descendants,
    needs_bwrap,
)

pytestmark = [needs_bwrap, pytest.mark.usefixtures("no_leftovers")]


# ---------------------------------------------------------------- ordinary statuses


def test_statuses_of_ordinary_programs(sandbox: Sandbox) -> None:
    ok = sandbox.run("import sys\nprint(sys.stdin.read().upper(), end='')", "python", "abc\n")
    assert (ok.status, ok.stdout, ok.exit_code) == ("ok", "ABC\n", 0)
    assert ok.wall_s > 0
    crash = sandbox.run("raise ValueError('boom')", "python")
    assert crash.stderr.startswith("Traceback (most recent call last):\n  File \"/tmp/main.py\"")  # no frame of ours
    assert crash.stderr.startswith('Traceback (most recent call last):\n  File "/tmp/main.py"')  # none of ours
    assert sandbox.run("import sys; sys.exit(3)", "python").exit_code == 3
    syntax = sandbox.run("def f(:\n  pass", "python")
    assert syntax.status == "compile_error" and "SyntaxError" in syntax.stderr
    compile_error = sandbox.run("int main() { return undeclared; }", "c")
    assert compile_error.status == "compile_error" and "undeclared" in compile_error.stderr
    abort = sandbox.run(c_program("int main() { abort(); }"), "c")
    assert (abort.status, abort.exit_code) == ("runtime_error", -6)
    segv = sandbox.run(c_program("int main() { volatile int *p = 0; return *p; }"), "c")
    assert (segv.status, segv.exit_code) == ("runtime_error", -11)
    cpp = sandbox.run("#include <iostream>\nint main(){long a,b; std::cin>>a>>b; std::cout<<a*b<<'\\n';}", "cpp",
                      "6 7")
    assert (cpp.status, cpp.stdout) == ("ok", "42\n")


def test_languages_and_limits_are_validated() -> None:
    assert [normalize_language(x) for x in ("Python3", "c", "C++", "cxx", None)] == ["python", "c", "cpp", "cpp",
                                                                                       "python"]
    from posttrain.core.errors import DataError

    with pytest.raises(DataError, match="unsupported language 'cobol'"):
        normalize_language("cobol")
    with pytest.raises(DataError, match="timeout_s"):
        Limits(timeout_s=0).check()


def test_tests_of_one_call_are_isolated_from_each_other(sandbox: Sandbox) -> None:
    """A test cannot leave files, processes or state for the next one: each starts in a fresh process and /tmp."""
    program = (
        "import os, subprocess, sys\n"
        "mode = input()\n"
        "if mode == 'dirty':\n"
        "    open('/tmp/left', 'w').write('x'); open('/dev/shm/left', 'w').write('x')\n"
        "    os.makedirs('/tmp/locked/deep'); os.chmod('/tmp/locked', 0)\n"
        f"    subprocess.Popen(['sleep', '{MARK}'], start_new_session=True)\n"
        "    sys.modules['json'] = None\n"
        "    print('dirtied')\n"
        "else:\n"
        "    procs = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        f"    marked = [p for p in procs if b'{MARK}' in open(f'/proc/{{p}}/cmdline', 'rb').read()]\n"
        "    import json\n"
        "    print(sorted(os.listdir('/tmp')), os.listdir('/dev/shm'), len(marked), json.dumps(1))\n"
    )
    compiled, results = sandbox.run_tests(program, "python", ["dirty", "clean", "dirty", "clean"])
    assert compiled is None
    assert [r.stdout for r in results] == ["dirtied\n", "['main.py'] [] 0 1\n"] * 2



def test_c_binary_is_compiled_once_and_cannot_be_changed_by_a_test(sandbox: Sandbox) -> None:
    program = c_program('int main() { char m[8] = {0}; if (scanf("%7s", m) != 1) return 2;\n'
                 '  if (!strcmp(m, "smash")) { FILE *f = fopen("/tmp/prog", "w"); if (f) fputs("junk", f);\n'
                 '    unlink("/tmp/prog"); puts("smashed"); return 0; }\n'
                 '  printf("%d\\n", (int)strlen(m)); return 0; }')
    compiled, results = sandbox.run_tests(program, "c", ["smash", "abc", "smash", "hello"])
    assert compiled is not None and compiled.status == "ok"
    assert [r.stdout for r in results] == ["smashed\n", "3\n", "smashed\n", "5\n"]


# ---------------------------------------------------------------- refusing to run without isolation


def test_refuses_without_bubblewrap() -> None:
    with pytest.raises(SandboxUnavailable) as info:
        Sandbox(bwrap="/nonexistent/bwrap").check()
    message = str(info.value)
    assert "bubblewrap" in message and "make setup" in message and "apt-get install bubblewrap" in message
    assert "allow_unsandboxed=True" in message


def test_unsandboxed_only_when_allowed_and_loudly(caplog: pytest.LogCaptureFixture) -> None:
    before = set(descendants())
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards.sandbox"):
        sandbox = Sandbox(LIMITS, bwrap="/nonexistent/bwrap", allow_unsandboxed=True).check()
    assert sandbox.isolated is False
    assert any("WITHOUT A SANDBOX" in r.getMessage() for r in caplog.records)
    assert sandbox.run("print(input()[::-1])", "python", "abc").stdout == "cba\n"
    assert sandbox.run("import time\ntime.sleep(100)", "python").status == "timeout"
    assert sandbox.run(c_program("int main(){puts(\"c\");}"), "c").stdout == "c\n"
    sandbox.close()
    assert set(descendants()) - before == set()



def test_cli_names_the_fix_when_bubblewrap_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"completion": "```python\\nprint(1)\\n```", "tests": [{"input": "", "output": "1"}]}\n')
    env = {**os.environ, "POSTTRAIN_BWRAP": "/nonexistent/bwrap"}
    proc = subprocess.run([sys.executable, "-m", "posttrain.cli", "rewards", "score", "--reward", "code",
                           "--input", str(src), "--output", str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "make setup" in proc.stderr and "Traceback" not in proc.stderr
