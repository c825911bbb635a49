from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.core.errors import PosttrainError
from posttrain.core.run_folder import StageState
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS, register_stage_kind

RECIPE = """\
output_dir: {out}
seed: 0
model:
  name_or_path: {base}
stages:
  - name: first
    kind: counting
    rows: {rows}
    delay_s: {delay}
  - name: second
    kind: counting
    rows: 2
    data: first
"""


def recipe_text(out: Path, base: Path, rows: int = 5, delay: float = 0.0) -> str:
    return RECIPE.format(out=out, base=base, rows=rows, delay=delay)


def test_run_writes_outputs_and_report(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    report = run_recipe(parse_recipe(recipe_text(out, tiny_base), kinds=KINDS))
    assert list(report["stages"]) == ["first", "second"]
    first = report["stages"]["first"]
    assert first["kind"] == "counting" and first["status"] == "done" and first["metrics"]["rows"] == 5
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "resolved_recipe.yaml").exists() and (out / "report.md").exists()
    # The second stage read the first one's output through its reference.
    rows = [json.loads(line) for line in (out / "second" / "data.jsonl").read_text().splitlines()]
    assert rows[0]["upstream"] == 5


def test_rerun_skips_unchanged_and_reruns_changed(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    run_recipe(parse_recipe(recipe_text(out, tiny_base), kinds=KINDS))
    report = run_recipe(parse_recipe(recipe_text(out, tiny_base), kinds=KINDS))
    assert [e["status"] for e in report["stages"].values()] == ["skipped", "skipped"]
    assert report["stages"]["first"]["metrics"]["rows"] == 5  # metrics survive a skip

    # Changing the first stage reruns it, and the second too (it depends on the first).
    report = run_recipe(parse_recipe(recipe_text(out, tiny_base, rows=3), kinds=KINDS))
    assert [e["status"] for e in report["stages"].values()] == ["done", "done"]
    assert len((out / "first" / "data.jsonl").read_text().splitlines()) == 3
    # The old outputs were moved aside, not deleted.
    assert len((out / "first.prev" / "data.jsonl").read_text().splitlines()) == 5


def test_only_selected_stages_run(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    report = run_recipe(parse_recipe(recipe_text(out, tiny_base), kinds=KINDS), only=["first"])
    assert list(report["stages"]) == ["first"]
    with pytest.raises(PosttrainError, match="no stage named nope"):
        run_recipe(parse_recipe(recipe_text(out, tiny_base), kinds=KINDS), only=["nope"])


def test_failed_stage_is_reported_and_stops_the_run(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    text = recipe_text(out, tiny_base).replace("data: first", "data: first\n    fail_after: 1")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    second = report["stages"]["second"]
    assert second["status"] == "failed"
    assert "counting failed on purpose" in second["metrics"]["error"]
    assert StageState.read(out / "second").status == "failed"  # type: ignore[union-attr]


def _cli(python: str, recipe: Path) -> subprocess.Popen[str]:
    code = ("import sys; from posttrain.stages import register_stage_kind; "
            "register_stage_kind('counting', 'tests.posttrain.plugins.counting_stage'); "
            "from posttrain.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([python, "-c", code, "run", str(recipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_mid_stage_then_resume_gives_same_outputs(tmp_path: Path, tiny_base: Path, python: str) -> None:
    out, ref = tmp_path / "killed", tmp_path / "reference"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(out, tiny_base, rows=40, delay=0.05))
    proc = _cli(python, recipe)
    data = out / "first" / "data.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not data.exists() or len(data.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    written = len(data.read_text().splitlines())
    assert 5 <= written < 40
    assert StageState.read(out / "first").status == "interrupted"  # type: ignore[union-attr]

    proc = _cli(python, recipe)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["first"]["status"] == "done"
    assert report["stages"]["first"]["metrics"]["resumed_at"] == written

    # The reference, uninterrupted, in process: the same runner the command calls, without a second start-up.
    reference = run_recipe(parse_recipe(recipe_text(ref, tiny_base, rows=40, delay=0.0), kinds=KINDS))
    assert {e["status"] for e in reference["stages"].values()} == {"done"}
    for stage in ("first", "second"):
        assert (out / stage / "data.jsonl").read_text() == (ref / stage / "data.jsonl").read_text()


def test_cli_run_exit_codes(tmp_path: Path, tiny_base: Path, python: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(tmp_path / "out", tiny_base).replace("data: first", "data: first\n    fail_after: 0"))
    proc = _cli(python, recipe)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "failed stages: second" in err
    recipe.write_text("stages: [")
    proc = _cli(python, recipe)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "invalid YAML" in err and "Traceback" not in err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


IDENTITY_RECIPE = """\
output_dir: /tmp/identity
model: {{name_or_path: /models/base}}
stages:
  - name: grpo
    kind: grpo
    data: prompts.jsonl
    rewards: [{{name: math}}]
    launch: {launch}
    rollout: {rollout}
"""


def _grpo_identity(launch: str = "{}", rollout: str = "{}") -> str:
    from posttrain.run.runner import stage_hash

    recipe = parse_recipe(IDENTITY_RECIPE.format(launch=launch, rollout=rollout), kinds=KINDS, check=False)
    return stage_hash(recipe, recipe.stages[0], "base", {})


def test_where_a_stage_runs_is_no_part_of_its_identity() -> None:
    """Ports, hosts, a machine's rank and who starts the rollout server never retrain a stage; what changes the
    training (the number of processes: the batch) does. Defaults hash as they did before these options existed."""
    plain = _grpo_identity()
    elsewhere = _grpo_identity(
        launch="{num_processes: 16, num_machines: 2, machine_rank: 1, main_process_ip: 10.0.0.1, "
               "main_process_port: 29555, gpu_memory_gb: 40}",
        rollout="{backend: vllm, mode: server, server_host: 10.0.0.2, server_port: 9000, start: true, gpus: [7]}")
    assert elsewhere == _grpo_identity(launch="{num_processes: 16, num_machines: 2, main_process_ip: 10.0.0.9}",
                                       rollout="{backend: vllm, mode: server}")
    assert elsewhere != plain and _grpo_identity(launch="{num_processes: 2}") != plain
    from posttrain.recipe import LaunchSpec
    from posttrain.stages.grpo import RolloutSpec

    identity = {"identity": True}
    assert LaunchSpec().model_dump(mode="json", context=identity) == {"num_processes": 1, "config_file": None,
                                                                       "main_process_port": None}
    assert RolloutSpec().model_dump(mode="json", context=identity) == {
        "backend": "auto", "mode": "colocate", "server_host": "127.0.0.1", "server_port": 8000,
        "gpu_memory_utilization": 0.3}


# --------------------------------------------------------------------------------------------------
# The report while a run goes on: text after every stage, plots once at the end (or on failure, Ctrl-C)

register_stage_kind("peeking", "tests.posttrain.plugins.peeking_stage")
PEEKING = """\
output_dir: {out}
seed: 0
model:
  name_or_path: {base}
stages:
  - {{name: one, kind: peeking}}
  - {{name: two, kind: peeking, then: {then}}}
"""


@pytest.mark.parametrize("then", ["finish", "fail", "interrupt"])
def test_plots_are_drawn_once_when_the_run_ends_fails_or_is_interrupted(
        then: str, tmp_path: Path, tiny_base: Path) -> None:
    from posttrain.report import PLOTS_LATER

    out = tmp_path / "run"
    recipe = parse_recipe(PEEKING.format(out=out, base=tiny_base, then=then), kinds=KINDS)
    if then == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            run_recipe(recipe)
    else:
        run_recipe(recipe)
    # When stage two started, report.md already said stage one was done, without drawing any plot.
    seen = json.loads((out / "two" / "peek.json").read_text())
    assert seen["plots"] == []
    assert PLOTS_LATER in seen["report_md"] and "## 1. one (`peeking`)" in seen["report_md"]
    assert json.loads((out / "report.json").read_text())["stages"]["one"]["status"] == "done"
    # At the end, whatever the end, the plots are there and report.md shows them.
    md = (out / "report.md").read_text()
    assert PLOTS_LATER not in md
    assert (out / "plots" / "one_loss.png").is_file() and "](plots/one_loss.png)" in md
    assert (out / "plots" / "two_loss.png").is_file() == (then == "finish")  # failed stages get no figures
