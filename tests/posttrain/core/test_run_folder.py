"""A run folder nothing can corrupt (issue #17): one run per folder, honest skips, backups that survive,
one-line errors for what the user can fix about the folder itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.core.run_folder import read_jsonl
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from tests.posttrain.run.test_runner import recipe_text

ROOT = Path(__file__).resolve().parents[3]
CLI = ("import sys; from posttrain.stages import register_stage_kind; "
       "register_stage_kind('counting', 'tests.posttrain.plugins.counting_stage'); "
       "from posttrain.cli import main; sys.exit(main(sys.argv[1:]))")


def cli(python: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([python, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(text: str, only: list[str] | None = None) -> dict[str, dict[str, object]]:
    return run_recipe(parse_recipe(text, kinds=KINDS), only)["stages"]


def statuses(report: dict[str, dict[str, object]]) -> dict[str, object]:
    return {name: entry["status"] for name, entry in report.items()}


def rows(path: Path) -> list[int]:
    return [r["i"] for r in read_jsonl(path)]


def wait_for_rows(path: Path, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < n):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# 1. One run per output folder


def test_a_second_run_on_the_same_folder_refuses_and_names_the_holder(tmp_path: Path, tiny_base: Path,
                                                                       python: str) -> None:
    out, recipe = tmp_path / "run", tmp_path / "r.yaml"
    recipe.write_text(recipe_text(out, tiny_base, rows=400, delay=0.05))
    first = cli(python, "run", str(recipe))
    try:
        wait_for_rows(out / "first" / "data.jsonl", 2, first)
        second = cli(python, "run", str(recipe))
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        (line,) = err.strip().splitlines()
        assert line.startswith(f"error: {out} is in use by another posttrain run (PID {first.pid} on "
                               f"{socket.gethostname()}, started "), line
        assert first.poll() is None  # the holder was not disturbed
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130
    assert not (out / "posttrain.lock").exists()  # released on the way out


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path: Path, tiny_base: Path, python: str) -> None:
    out, recipe = tmp_path / "run", tmp_path / "r.yaml"
    recipe.write_text(recipe_text(out, tiny_base, rows=400, delay=0.05))
    killed = cli(python, "run", str(recipe))
    wait_for_rows(out / "first" / "data.jsonl", 2, killed)
    killed.kill()
    killed.communicate(timeout=60)
    assert json.loads((out / "posttrain.lock").read_text())["pid"] == killed.pid

    recipe.write_text(recipe_text(out, tiny_base, rows=5))
    again = cli(python, "run", str(recipe))
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert f"taking over a stale lock: the run that held it (PID {killed.pid} on" in err


def test_a_worker_runs_only_under_the_lock_of_the_run_that_launched_it(tmp_path: Path, tiny_base: Path,
                                                                        python: str) -> None:
    out = tmp_path / "run"
    run(recipe_text(out, tiny_base))
    code = CLI.replace("from posttrain.cli import main", "from posttrain.launch.worker import main")
    proc = subprocess.run([python, "-c", code, str(out), "first"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "is not locked by the posttrain run that launched this worker" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------------
# 2. Skips that are true


def test_a_changed_input_file_reruns_the_stage_and_what_reads_it(tmp_path: Path, tiny_base: Path) -> None:
    out, data = tmp_path / "run", tmp_path / "input.jsonl"
    data.write_text('{"x": 1}\n')
    text = recipe_text(out, tiny_base).replace("    delay_s: 0.0\n", f"    delay_s: 0.0\n    data: {data}\n")
    assert statuses(run(text)) == {"first": "done", "second": "done"}
    assert statuses(run(text)) == {"first": "skipped", "second": "skipped"}
    data.write_text('{"x": 1}\n{"x": 2}\n')
    assert statuses(run(text, ["first", "second"])) == {"first": "done", "second": "done"}
    assert read_jsonl(out / "first" / "data.jsonl")[0]["upstream"] == 2


def test_a_stage_left_out_by_stages_is_never_reported_fresh_when_its_input_changed(tmp_path: Path,
                                                                                    tiny_base: Path) -> None:
    out = tmp_path / "run"
    run(recipe_text(out, tiny_base))
    changed = recipe_text(out, tiny_base, rows=3)
    report = run(changed, ["first"])
    assert statuses(report) == {"first": "done"}  # `second` read the old rows: not run, not "done"/"skipped"
    assert "second" not in json.loads((out / "report.json").read_text())["stages"]
    assert "| second | counting | not run |" in (out / "report.md").read_text()
    # Asked for on its own, it reruns on the new rows.
    assert statuses(run(changed, ["second"])) == {"first": "skipped", "second": "done"}
    assert read_jsonl(out / "second" / "data.jsonl")[0]["upstream"] == 3


def test_a_stage_whose_input_is_stale_fails_clearly_instead_of_reading_it(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    run(recipe_text(out, tiny_base))
    report = run(recipe_text(out, tiny_base, rows=3), ["second"])
    assert report["second"]["status"] == "failed"
    assert "stage(s) first, which have not finished with their current config" in report["second"]["metrics"]["error"]
    assert "--stages first,second" in report["second"]["metrics"]["error"]


def test_a_finished_stage_whose_outputs_are_gone_runs_again(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    run(recipe_text(out, tiny_base))
    (out / "first" / "data.jsonl").unlink()
    assert statuses(run(recipe_text(out, tiny_base))) == {"first": "done", "second": "done"}
    assert rows(out / "first" / "data.jsonl") == [0, 1, 2, 3, 4]


def test_leftovers_without_stage_json_are_set_aside_not_resumed(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    report = run(recipe_text(out, tiny_base).replace("rows: 5", "rows: 5\n    fail_after: 3"))
    assert report["first"]["status"] == "failed" and rows(out / "first" / "data.jsonl") == [0, 1, 2]
    (out / "first" / "stage.json").unlink()
    report = run(recipe_text(out, tiny_base, rows=5).replace("seed: 0", "seed: 1"))
    assert report["first"]["status"] == "done" and report["first"]["metrics"]["resumed_at"] == 0
    assert {r["seed"] for r in read_jsonl(out / "first" / "data.jsonl")} == {1}
    assert rows(out / "first.unfinished" / "data.jsonl") == [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# 3. Backups that survive


def test_a_failed_attempt_never_costs_the_last_finished_backup(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    run(recipe_text(out, tiny_base, rows=5))
    typo = recipe_text(out, tiny_base, rows=6).replace("rows: 6", "rows: 6\n    fail_after: 2")
    assert run(typo)["first"]["status"] == "failed"
    assert rows(out / "first.prev" / "data.jsonl") == [0, 1, 2, 3, 4]
    assert statuses(run(recipe_text(out, tiny_base, rows=7))) == {"first": "done", "second": "done"}
    assert rows(out / "first.prev" / "data.jsonl") == [0, 1, 2, 3, 4]  # still the last finished run
    assert rows(out / "first.unfinished" / "data.jsonl") == [0, 1]


def test_reverting_a_change_restores_the_finished_backup_instead_of_recomputing(tmp_path: Path,
                                                                                tiny_base: Path) -> None:
    out = tmp_path / "run"
    run(recipe_text(out, tiny_base, rows=5))
    run(recipe_text(out, tiny_base, rows=3))
    assert statuses(run(recipe_text(out, tiny_base, rows=5))) == {"first": "skipped", "second": "skipped"}
    assert rows(out / "first" / "data.jsonl") == [0, 1, 2, 3, 4]
    assert read_jsonl(out / "second" / "data.jsonl")[0]["upstream"] == 5
    assert rows(out / "first.prev" / "data.jsonl") == [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# 6. What the user can get wrong about the folder: one line, exit 2, resumable


def one_line_error(proc: subprocess.Popen[str]) -> str:
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    (line,) = [x for x in err.strip().splitlines() if x.startswith("error: ")]
    return line


def test_an_output_dir_that_is_a_file_or_under_one(tmp_path: Path, tiny_base: Path, python: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(tmp_path / "run", tiny_base))
    (tmp_path / "afile").write_text("x")
    line = one_line_error(cli(python, "run", str(recipe), "--output-dir", str(tmp_path / "afile")))
    assert line == f"error: {tmp_path / 'afile'}: the output folder is a file: choose another output_dir (--output-dir)"
    line = one_line_error(cli(python, "run", str(recipe), "--output-dir", str(tmp_path / "afile" / "run")))
    assert line.startswith(f"error: {tmp_path / 'afile' / 'run'}: cannot create the output folder: Not a directory")


needs_unshare = pytest.mark.skipif(
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode != 0,
    reason="needs unprivileged user and mount namespaces (unshare) for a read-only or tiny file system")


def in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in its own user+mount namespace: mounts there are private to it (root not needed)."""
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@needs_unshare
def test_a_read_only_output_dir(tmp_path: Path, tiny_base: Path, python: str) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(ro / "run", tiny_base))
    script = (f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} && "
              f"{python} -c \"{CLI}\" run {recipe} 2>{tmp_path}/err; echo $? > {tmp_path}/rc")
    proc = in_namespace(script)
    assert (tmp_path / "rc").read_text().strip() == "2", proc.stderr
    err = (tmp_path / "err").read_text()
    assert "Traceback" not in err
    assert err.strip() == f"error: {ro / 'run'}: cannot create the output folder: Read-only file system"


@needs_unshare
def test_a_full_disk_is_one_line_and_the_rerun_resumes_to_the_same_rows(tmp_path: Path, tiny_base: Path,
                                                                         python: str) -> None:
    from tests.mini_recipes import distill_only

    disk, saved, ref = tmp_path / "disk", tmp_path / "saved", tmp_path / "ref"
    disk.mkdir()

    def recipe(out: Path) -> str:
        text = distill_only(out, prompts=300, samples=4).replace("n: 4\n", "n: 4\n    chunk_size: 20\n")
        return text.replace("  tiny: {}\ntokenizer:\n  train:\n    corpus: data_pipelines.tasks.arithmetic:corpus\n",
                            f"  name_or_path: {tiny_base}\n")

    (tmp_path / "r.yaml").write_text(recipe(disk / "run"))
    assert run(recipe(ref))["distill"]["status"] == "done"
    run_cmd = f"{python} -c \"{CLI}\" run {tmp_path / 'r.yaml'}"
    script = (f"mount -t tmpfs -o size=96k tmpfs {disk} && "
              f"{run_cmd} 2>{tmp_path}/err1; echo $? > {tmp_path}/rc1; "
              f"mount -o remount,size=64m {disk} && {run_cmd} 2>{tmp_path}/err2; echo $? > {tmp_path}/rc2; "
              f"cp -r {disk}/run {saved}")
    proc = in_namespace(script)
    err1 = (tmp_path / "err1").read_text()
    assert (tmp_path / "rc1").read_text().strip() == "2", err1[-3000:] + proc.stderr
    assert "Traceback" not in err1 and "Logging error" not in err1, err1[-3000:]
    (line,) = [x for x in err1.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: {disk / 'run'}") and "No space left on device" in line, line
    assert (tmp_path / "rc2").read_text().strip() == "0", (tmp_path / "err2").read_text()[-3000:]
    assert "resuming" in (tmp_path / "err2").read_text()
    for name in ("data.jsonl", "pairs.jsonl", "prompts.jsonl", "eval.jsonl"):
        if (ref / "distill" / name).exists():
            assert (saved / "distill" / name).read_text() == (ref / "distill" / name).read_text(), name


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, *os.environ.get("PYTEST_ARGS", "").split()]))
