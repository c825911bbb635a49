"""The supervisor (rewards/sandbox/supervisor.py): its decisions in-process, then the real file run as a process.

The decisions are pure functions, tested here directly. The process tests start the supervisor as
the unsandboxed mode does (the system's Python, `-c` with the file's text, in a temporary
directory), without bubblewrap, and talk to it through the wire protocol.
"""

from __future__ import annotations

import ast
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rewards.sandbox import Limits, supervisor
from rewards.sandbox.bwrap import sandbox_python, supervisor_source, unsandboxed
from rewards.sandbox.languages import TABLE
from rewards.sandbox.protocol import RecordReader, encode_job, make_job
from rewards.sandbox.supervisor import Capped, classify, collect, exit_status, harness_passed, remove, rlimits

SOURCE = Path(supervisor.__file__).read_text(encoding="utf-8")


def exited(code: int) -> int:
    """A wait status: exited with `code`."""
    return code << 8


def signaled(sig: int) -> int:
    """A wait status: killed by `sig`."""
    return int(sig)


# ---------------------------------------------------------------- shipped as text, run by the system's Python


def test_the_shipped_text_is_this_file_and_imports_only_the_standard_library() -> None:
    assert supervisor_source() == SOURCE
    tree = ast.parse(SOURCE, feature_version=(3, 8))  # the oldest Python it may meet inside
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import cannot work inside the sandbox"
            imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    at_start = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert not at_start & {"json", "traceback", "typing"}  # slow imports: traceback only lazily, on errors
    top_level = {type(node).__name__ for node in tree.body}
    assert top_level <= {"Expr", "ImportFrom", "Import", "Assign", "AnnAssign", "FunctionDef", "ClassDef", "If"}


def test_it_starts_only_when_run_as_a_program() -> None:
    """Importing it (as the host and these tests do) does nothing; `python -c <text>` runs main()."""
    last = ast.parse(SOURCE).body[-1]
    assert isinstance(last, ast.If) and ast.unparse(last.test) == "__name__ == '__main__'"
    assert ast.unparse(last.body[0]) == "main(sys.argv[1:])"


# ---------------------------------------------------------------- output capping


def test_capped_keeps_the_first_bytes_and_counts_all() -> None:
    out = Capped(10)
    for chunk in (b"abcd", b"efgh", b"ijkl", b"", b"mnop"):
        out.add(chunk)
    assert bytes(out.data) == b"abcdefghij" and out.seen == 16 and out.truncated
    exact = Capped(4)
    exact.add(b"abcd")
    assert not exact.truncated and exact.text() == "abcd"
    exact.add(b"e")
    assert exact.truncated and exact.text() == "abcd"
    assert Capped(8).text() == "" and Capped(3).truncated is False


def test_capped_text_survives_a_cut_inside_a_character() -> None:
    out = Capped(5)
    out.add("ab€".encode())  # 2 + 3 bytes: fits exactly
    out.add("€".encode())
    assert out.text() == "ab€" and out.truncated
    cut = Capped(3)
    cut.add("a€".encode())  # the cap falls inside the euro sign
    assert cut.text() == "a\ufffd"


# ---------------------------------------------------------------- how a test ended


def _classify(wait_status: int | None, reason: str | None = None, stderr: str = "", cpu_s: float = 0.0,
              **kwargs: Any) -> tuple[str, int | None, str]:
    return classify(wait_status, reason, stderr, timeout_s=2.0, cpu_s=cpu_s, cap_out=1000, **kwargs)


def test_exit_codes_decide_ok_and_runtime_error() -> None:
    assert _classify(exited(0)) == ("ok", 0, "")
    assert _classify(exited(0), stderr="MemoryError mentioned") == ("ok", 0, "MemoryError mentioned")
    assert _classify(exited(3), stderr="boom") == ("runtime_error", 3, "boom")
    assert _classify(exited(1), stderr="Traceback:\nMemoryError") == ("memory_limit", 1, "Traceback:\nMemoryError")
    assert _classify(exited(1), stderr="std::bad_alloc")[0] == "memory_limit"


def test_signals_decide_crash_kill_timeout_and_memory() -> None:
    status, code, stderr = _classify(signaled(signal.SIGSEGV))
    assert (status, code) == ("runtime_error", -11) and stderr.endswith("terminated by signal 11 (SIGSEGV)")
    assert _classify(signaled(signal.SIGABRT))[:2] == ("runtime_error", -6)
    status, code, stderr = _classify(signaled(signal.SIGKILL), cpu_s=0.5)
    assert (status, code) == ("killed", -9) and stderr.endswith("killed by signal 9 (SIGKILL)")
    # RLIMIT_CPU: SIGXCPU at the soft limit (int(timeout) + 1 s), SIGKILL at the hard one
    assert _classify(signaled(signal.SIGXCPU))[:2] == ("timeout", -signal.SIGXCPU)
    status, code, stderr = _classify(signaled(signal.SIGKILL), cpu_s=2.95)
    assert (status, code) == ("timeout", -9) and stderr.endswith("CPU time limit of 3 s")
    assert _classify(signaled(signal.SIGKILL), cpu_s=2.85)[0] == "killed"
    assert _classify(signaled(signal.SIGABRT), stderr="std::bad_alloc")[:2] == ("memory_limit", -6)


def test_our_reasons_come_first() -> None:
    status, code, stderr = _classify(exited(0), reason="timeout", stderr="partial")
    assert (status, code) == ("timeout", None) and stderr == "partial\n[sandbox] killed: wall time limit of 2 s"
    status, code, stderr = _classify(None, reason="output")
    assert (status, code) == ("killed", None) and "output limit of 1000 bytes" in stderr
    assert _classify(None) == ("killed", None, "")  # never reaped: not a pass, not a crash


def test_a_language_can_add_memory_markers() -> None:
    rust = "memory allocation of 4096 bytes failed"
    assert _classify(signaled(signal.SIGABRT), stderr=rust)[0] == "runtime_error"
    markers = (*supervisor.MEMORY_MARKERS, "memory allocation of")
    assert _classify(signaled(signal.SIGABRT), stderr=rust, memory_markers=markers)[0] == "memory_limit"


# ---------------------------------------------------------------- the harness's pass/fail decision


def test_a_check_passes_only_with_exit_0_and_the_token() -> None:
    token = "ab" * 16
    assert harness_passed("ok", token.encode(), token)
    assert not harness_passed("ok", b"", token)  # sys.exit(0) / os._exit(0) before the end: no token
    assert not harness_passed("ok", token[:-1].encode(), token)
    assert not harness_passed("ok", (token + "x").encode(), token)
    assert not harness_passed("runtime_error", token.encode(), token)  # the token, then a crash at exit
    assert not harness_passed("ok", b"", "")


def test_exit_status_follows_python() -> None:
    assert exit_status(None) == (0, None)
    assert exit_status(0) == (0, None) and exit_status(3) == (3, None)
    assert exit_status("bye") == (1, "bye") and exit_status([1]) == (1, "[1]")


def test_rlimits_of_a_test() -> None:
    limits = dict(rlimits(2.5, 256, 16, 64))
    assert limits[resource.RLIMIT_CPU] == (3, 4)  # whole seconds, the hard limit a second later
    assert limits[resource.RLIMIT_AS] == (256 << 20, 256 << 20)
    assert limits[resource.RLIMIT_FSIZE] == (16 << 20, 16 << 20)
    assert limits[resource.RLIMIT_NOFILE] == (64, 64) and limits[resource.RLIMIT_CORE] == (0, 0)


# ---------------------------------------------------------------- files


def test_collect_reads_names_and_patterns(tmp_path: Path) -> None:
    for name, data in (("prog", b"\x7fELF"), ("Main.class", b"A"), ("Main$1.class", b"B"), ("main.c", b"int")):
        (tmp_path / name).write_bytes(data)
    assert collect(str(tmp_path), ["prog"]) == {"prog": b"\x7fELF"}
    assert collect(str(tmp_path), ["*.class"]) == {"Main$1.class": b"B", "Main.class": b"A"}
    with pytest.raises(FileNotFoundError, match="prog2"):
        collect(str(tmp_path), ["prog2"])
    with pytest.raises(FileNotFoundError, match=r"\*\.jar"):
        collect(str(tmp_path), ["*.jar"])


def test_remove_takes_trees_whatever_their_permissions(tmp_path: Path) -> None:
    locked = tmp_path / "locked" / "deep"
    locked.mkdir(parents=True)
    (locked / "f").write_text("x")
    os.symlink("/etc", tmp_path / "locked" / "link")  # followed by nothing: the link goes, /etc stays
    locked.chmod(0)
    (tmp_path / "locked").chmod(0)
    remove(str(tmp_path / "locked"))
    assert list(tmp_path.iterdir()) == [] and Path("/etc/hostname").exists()


# ---------------------------------------------------------------- the file run as a process


def serve(tmp_path: Path, jobs: list[dict[str, Any]], timeout_s: float = 60.0) -> tuple[list[list[dict]], int]:
    """Run the supervisor unsandboxed in `tmp_path` on `jobs`; the records of each job, and its exit status."""
    python = sandbox_python(None)[0]
    launch = unsandboxed(python, str(tmp_path))
    proc = subprocess.run([*launch.argv, str(tmp_path), "0", "16"], input=b"".join(map(encode_job, jobs)),
                          capture_output=True, env=launch.popen["env"], cwd="/", timeout=timeout_s,
                          start_new_session=True)
    answers: list[list[dict]] = [[]]
    for record in RecordReader().feed(proc.stdout):
        if record.get("done"):
            answers.append([])
        else:
            answers[-1].append(record)
    assert answers.pop() == [], proc.stderr  # every job was answered, and finished
    return answers, proc.returncode


LIMITS = Limits(timeout_s=2.0, memory_mb=256)


def test_jobs_are_answered_in_turn_and_eof_ends_it(tmp_path: Path) -> None:
    echo = make_job(TABLE["python"], "import sys\nprint(sys.stdin.read()[::-1])", ["abc", "", "é"],
                    check=False, limits=LIMITS)
    c_square = make_job(TABLE["c"], '#include <stdio.h>\nint main(){int n; scanf("%d",&n); printf("%d\\n", n*n);}',
                        ["3", "12"], check=False, limits=LIMITS)
    (first, second), status = serve(tmp_path, [echo, c_square])
    assert status == 0
    assert [(r["test"], r["result"]["status"], r["result"]["stdout"]) for r in first] == [
        (0, "ok", "cba\n"), (1, "ok", "\n"), (2, "ok", "é\n")]
    assert second[0]["compile"]["status"] == "ok"
    assert [r["result"]["stdout"] for r in second[1:]] == ["9\n", "144\n"]
    assert list(tmp_path.iterdir()) == []  # wiped after the last job


def test_the_harness_decides_pass_or_fail(tmp_path: Path) -> None:
    """check=True: passed only if the program ran to its end; exiting early or swapping the excepthook is not a pass."""
    programs = {
        "x = 1": True,
        "raise AssertionError('no')": False,
        "import sys; sys.exit(0)": False,
        "import os; os._exit(0)": False,
        "import sys\nsys.excepthook = lambda *a: None\nraise AssertionError": False,
        "import atexit, os; atexit.register(lambda: os._exit(0))\nraise AssertionError": False,
        "import sys; sys.stdout.close()": True,
    }
    jobs = [make_job(TABLE["python"], code, [""], check=True, limits=LIMITS) for code in programs]
    answers, status = serve(tmp_path, jobs)
    assert status == 0
    assert [records[0]["result"]["passed"] for records in answers] == list(programs.values())


def test_compile_errors_and_the_time_for_all_tests(tmp_path: Path) -> None:
    syntax = make_job(TABLE["python"], "def f(:", ["1", "2"], check=False, limits=LIMITS)
    c_error = make_job(TABLE["c"], "int main() { return nope; }", ["1"], check=False, limits=LIMITS)
    slow = make_job(TABLE["python"], "import time; time.sleep(1.0)", [""] * 6, check=False,
                    limits=Limits(timeout_s=5.0, total_timeout_s=3.0))
    (py, c, budget), _ = serve(tmp_path, [syntax, c_error, slow])
    assert [r["compile"]["status"] for r in py + c] == ["compile_error", "compile_error"]  # and no test ran
    assert "SyntaxError" in py[0]["compile"]["stderr"] and "nope" in c[0]["compile"]["stderr"]
    statuses = [r["result"]["status"] for r in budget]
    assert statuses[0] == "ok" and statuses[-1] == "timeout" and set(statuses) == {"ok", "timeout"}
    assert budget[-1]["result"]["stderr"] == "[sandbox] not run: the time for all tests (3 s) is spent"


def test_output_is_capped_and_the_program_stopped(tmp_path: Path) -> None:
    flood = make_job(TABLE["python"], "while True:\n    print('x' * 999)", [""], check=False,
                     limits=Limits(timeout_s=5.0, max_output_bytes=10_000, max_stderr_bytes=1000))
    ([[record]], _) = serve(tmp_path, [flood])
    result = record["result"]
    assert result["status"] == "killed" and result["truncated"] and len(result["stdout"]) == 10_000
    assert result["stderr"] == "[sandbox] killed: output limit of 10000 bytes"
