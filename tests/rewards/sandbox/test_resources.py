"""Hostile programs against the sandbox's bounds: processes, memory, time, output, /tmp and file size.

Each is stopped within its bound, leaves no process behind, and the sandbox works afterwards.
"""

from __future__ import annotations

import threading
import time

import pytest

from rewards.sandbox import RunResult, Sandbox
from tests.rewards.sandbox.helpers import (
    BACKGROUND_PY,
    BOUND_S,
    LIMITS,
    MARK,
    c_program,
    marked,
    needs_bwrap,
    still_works,
)

pytestmark = [needs_bwrap, pytest.mark.usefixtures("no_leftovers")]


# ---------------------------------------------------------------- processes


FORK_BOMB_PY = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
FORK_BOMB_C = c_program("int main() { for (;;) fork(); }")


@pytest.mark.parametrize("language", ["python", "c"])
def test_fork_bomb_is_contained(sandbox: Sandbox, language: str) -> None:
    start = time.monotonic()
    result = sandbox.run(FORK_BOMB_PY if language == "python" else FORK_BOMB_C, language)
    assert result.status in ("timeout", "killed", "runtime_error"), result
    assert time.monotonic() - start < BOUND_S
    still_works(sandbox)


def test_a_fork_bomb_does_not_starve_a_concurrent_run(sandbox: Sandbox) -> None:
    """Each concurrent run has its own process budget (its own uid / user namespace)."""
    bomb: list[RunResult] = []
    thread = threading.Thread(target=lambda: bomb.append(sandbox.run(FORK_BOMB_PY, "python")))
    thread.start()
    time.sleep(0.5)  # the bomb is at its process limit by now
    spawner = "import subprocess\nprint(sum(subprocess.run(['true']).returncode == 0 for _ in range(8)))"
    try:
        result = sandbox.run(spawner, "python")
    finally:
        thread.join()
    assert (result.status, result.stdout) == ("ok", "8\n")
    assert bomb[0].status in ("timeout", "killed", "runtime_error")



BACKGROUND_C = c_program(f"""int main() {{
  if (fork() == 0) {{ setsid(); if (fork() == 0) {{ execlp("sleep", "sleep", "{MARK}", (char *)0); }} _exit(0); }}
  if (fork() == 0) {{ signal(SIGHUP, SIG_IGN); execlp("sleep", "sleep", "{MARK}", (char *)0); }}
  puts("parent done"); return 0; }}""")


@pytest.mark.parametrize("language", ["python", "c"])
def test_background_processes_do_not_outlive_the_run(sandbox: Sandbox, language: str) -> None:
    result = sandbox.run(BACKGROUND_PY if language == "python" else BACKGROUND_C, language)
    assert (result.status, result.stdout) == ("ok", "parent done\n"), result.stderr
    assert marked() == []  # at once, not eventually


# ---------------------------------------------------------------- resources


@pytest.mark.parametrize(("language", "program"), [
    ("python", "x = []\nwhile True:\n    x.append(bytearray(10**7))"),
    ("cpp", "#include <vector>\nint main(){std::vector<std::vector<char>> v; for(;;) v.emplace_back(1<<20,'a');}"),
])
def test_memory_bombs_hit_the_memory_limit(sandbox: Sandbox, language: str, program: str) -> None:
    result = sandbox.run(program, language)
    assert result.status == "memory_limit", result


def test_c_memory_bomb_is_bounded(sandbox: Sandbox) -> None:
    program = c_program("int main() { size_t n = 0; for (;;) { char *p = malloc(1 << 20);"
                        " if (!p) { printf(\"%zu\\n\", n); return 3; } memset(p, 1, 1 << 20); n++; } }")
    result = sandbox.run(program, "c")
    assert (result.status, result.exit_code) == ("runtime_error", 3)
    assert int(result.stdout) <= LIMITS.memory_mb


@pytest.mark.parametrize(("language", "program"), [
    ("python", "while True:\n    pass"),
    ("python", "import time\ntime.sleep(1000)"),
    ("python", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.01)"),
    ("c", "int main() { for (;;); }"),
    ("c", c_program("int main() { sleep(1000); return 0; }")),
])
def test_loops_and_sleeps_time_out(sandbox: Sandbox, language: str, program: str) -> None:
    start = time.monotonic()
    result = sandbox.run(program, language)
    assert result.status == "timeout", result
    assert LIMITS.timeout_s <= result.wall_s < BOUND_S and time.monotonic() - start < BOUND_S


@pytest.mark.parametrize(("language", "program"), [
    ("python", "import sys\nwhile True:\n    sys.stdout.write('x' * 1000)"),
    ("python", "import sys\nwhile True:\n    sys.stderr.write('e' * 1000)"),
    ("c", c_program('int main() { for (;;) fputs("yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\\n", stdout); }')),
])
def test_huge_output_is_cut_off(sandbox: Sandbox, language: str, program: str) -> None:
    result = sandbox.run(program, language)
    assert result.status == "killed" and "output limit" in result.stderr, result.stderr[-200:]
    assert len(result.stdout.encode()) <= LIMITS.max_output_bytes
    assert len(result.stderr.encode()) <= LIMITS.max_stderr_bytes + 200
    assert result.truncated


FILL_PY = """
import os
total = 0
for top in ('/tmp', '/dev/shm'):
    for i in range(10**6):
        try:
            with open(f'{top}/fill{i}', 'wb') as f:
                f.write(b'x' * (1 << 20))
            total += 1 << 20
        except OSError as e:
            print(top, e.strerror)
            break
print(total)
"""
FILL_C = c_program("""int main() { static char buf[1 << 20]; long total = 0; char path[64];
  memset(buf, 'x', sizeof buf);
  for (int i = 0; ; i++) { snprintf(path, sizeof path, "/tmp/fill%d", i); FILE *f = fopen(path, "wb");
    if (!f) break; size_t n = fwrite(buf, 1, sizeof buf, f); if (fclose(f) != 0 || n < sizeof buf) break;
    total += n; }
  printf("%ld\\n", total); return 0; }""")


@pytest.mark.parametrize("language", ["python", "c"])
def test_filling_tmp_stops_at_its_cap(sandbox: Sandbox, language: str) -> None:
    _compiled, results = sandbox.run_tests(FILL_PY if language == "python" else FILL_C, language, ["", ""])
    for result in results:
        assert result.status == "ok", result.stderr
        total = int(result.stdout.split()[-1])
        assert 0 < total <= 2 * (LIMITS.tmp_mb << 20)  # /tmp and /dev/shm, each capped
    assert results[0].stdout == results[1].stdout  # the second test found an empty /tmp again


def test_one_file_cannot_exceed_the_file_size_limit(sandbox: Sandbox) -> None:
    program = ("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "f = open('/tmp/big', 'wb')\ntry:\n    f.write(b'x' * (20 << 20))\nexcept OSError as e:\n"
               "    print(e.strerror)\nimport os\nprint(os.path.getsize('/tmp/big') <= (16 << 20))")
    result = sandbox.run(program, "python", max_file_mb=4)
    assert result.status == "ok", result.stderr
    assert result.stdout.split("\n")[-2] == "True"
