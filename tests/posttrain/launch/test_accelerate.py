"""A stage under `accelerate launch` (launch.py): the command we build, accelerate's verdict on it, and a
two-machine launch played by two `posttrain run`s on this machine (CPU, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from posttrain.core.errors import PosttrainError
from posttrain.launch import accelerate as launch
from posttrain.launch.accelerate import (
    LAUNCH_NOTE,
    MULTI_NODE_PORT,
    _await_launch,
    follower_rank,
    launch_args,
    needs_launch,
)
from posttrain.recipe import StageConfig, parse_recipe
from posttrain.run.lock import run_lock
from posttrain.stages import KINDS

ROOT = Path(__file__).resolve().parents[3]

RECIPE = """\
output_dir: {out}
model: {{name_or_path: /models/base}}
stages:
  - name: first
    kind: counting
    rows: 2
    launch: {launch}
  - name: second
    kind: counting
    rows: 2
    launch: {second}
"""


def stage(launch_spec: str, tmp_path: Path = Path("/tmp/launch")) -> StageConfig:
    text = RECIPE.format(out=tmp_path, launch=launch_spec, second="{}")
    return parse_recipe(text, kinds=KINDS, check=False).stage("first")


def accelerate_reads(args: list[str]) -> dict[str, object]:
    """What accelerate's own parser and checks make of our options (raises where `accelerate launch` would)."""
    parsed = launch_command_parser().parse_args([*args, "-m", "posttrain.launch.worker", "DIR", "STAGE"])
    _validate_launch_command(parsed)
    return vars(parsed)


def test_one_machine_ddp_gets_a_free_port_and_cpu_threads_shared_out() -> None:
    spec = stage("{num_processes: 2}")
    assert needs_launch(spec)
    read = accelerate_reads(launch_args(spec))
    assert (read["num_processes"], read["num_machines"], read["multi_gpu"]) == (2, 1, True)
    assert read["main_process_port"] not in (None, MULTI_NODE_PORT)  # a free one: two runs never collide
    assert read["num_cpu_threads_per_process"] == max(1, (os.cpu_count() or 1) // 2)


def test_one_process_confined_to_some_gpus_is_a_plain_launch() -> None:
    """A stage beside a started rollout server runs launched with one process; accelerate refuses --multi_gpu."""
    spec = stage("{}")
    assert not needs_launch(spec)
    read = accelerate_reads(launch_args(spec))
    assert (read["num_processes"], read["multi_gpu"]) == (1, False)


def test_a_config_file_stage_takes_its_distribution_from_the_file() -> None:
    config = ROOT / "recipes" / "accelerate" / "zero3.yaml"
    spec = stage(f"{{num_processes: 8, config_file: {config}}}")
    args = launch_args(spec)
    assert "--multi_gpu" not in args and "--mixed_precision" not in args
    assert accelerate_reads(args)["config_file"] == str(config)


def test_each_machine_launches_its_share_with_its_rank() -> None:
    spec = stage("{num_processes: 16, num_machines: 2, machine_rank: 1, main_process_ip: 10.0.0.1}")
    assert needs_launch(spec)
    read = accelerate_reads(launch_args(spec))
    assert (read["num_processes"], read["num_machines"], read["machine_rank"]) == (16, 2, 1)
    assert (read["main_process_ip"], read["main_process_port"]) == ("10.0.0.1", MULTI_NODE_PORT)
    assert read["num_cpu_threads_per_process"] == max(1, (os.cpu_count() or 1) // 8)  # 8 per machine
    assert accelerate_reads(launch_args(spec, machine_rank=0))["machine_rank"] == 0
    ported = stage("{num_processes: 4, num_machines: 2, main_process_ip: node0, main_process_port: 29555}")
    assert accelerate_reads(launch_args(ported))["main_process_port"] == 29555


def test_a_machine_follows_when_its_multi_machine_stages_give_it_a_rank(tmp_path: Path) -> None:
    def rank(first: str, second: str = "{}", only: list[str] | None = None) -> int:
        text = RECIPE.format(out=tmp_path, launch=first, second=second)
        return follower_rank(parse_recipe(text, kinds=KINDS, check=False), only)

    two = "{num_processes: 2, num_machines: 2, main_process_ip: node0, machine_rank: %d}"
    assert rank("{num_processes: 2}") == 0
    assert rank(two % 0) == 0 and rank(two % 1) == 1
    assert rank(two % 1, two % 1) == 1
    with pytest.raises(PosttrainError, match=r"different ranks \(\[0, 1\]\).*launch.machine_rank"):
        rank(two % 1, two % 0)
    assert rank(two % 1, two % 0, only=["first"]) == 1  # only the selected stages count


def test_a_follower_waits_for_machine_0s_note_and_gives_up_when_its_run_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "POLL_S", 0.05)
    spec = stage("{num_processes: 2, num_machines: 2, main_process_ip: node0, machine_rank: 1}", tmp_path)
    (tmp_path / "first").mkdir()
    with run_lock(tmp_path):  # machine 0's run holds the folder and has launched the stage
        (tmp_path / "first" / LAUNCH_NOTE).write_text("{}")
        assert _await_launch(tmp_path, spec) == os.getpid()
        (tmp_path / "first" / LAUNCH_NOTE).unlink()
    # A run seen, then gone without launching: the follower stops instead of waiting for ever.
    import threading

    def machine_0() -> None:
        with run_lock(tmp_path):
            time.sleep(0.5)

    thread = threading.Thread(target=machine_0)
    thread.start()
    while not (tmp_path / "posttrain.lock").exists():
        time.sleep(0.01)
    assert _await_launch(tmp_path, spec) is None
    thread.join()


TWO_MACHINES = """\
output_dir: {out}
model: {{name_or_path: {base}}}
stages:
  - name: before
    kind: ranks
  - name: together
    kind: ranks
    launch: {{num_processes: 2, num_machines: 2, machine_rank: 0, main_process_ip: 127.0.0.1,
              main_process_port: {port}}}
"""


@pytest.mark.slow
def test_two_machines_run_one_stage_together(tmp_path: Path, tiny_base: Path, python: str) -> None:
    """Machine 0 runs the recipe; machine 1 (`--set ...machine_rank=1`) only joins the multi-machine stage, and
    accelerate's rendezvous makes one 2-process group of the two launches."""
    site = tmp_path / "site"  # the test stage kind as a plugin, so that launched workers find it too
    info = site / "posttrain_test_ranks-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: posttrain-test-ranks\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[posttrain.stages]\nranks = tests.posttrain.plugins.ranks_stage:run\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "run"
    recipe.write_text(TWO_MACHINES.format(out=out, base=tiny_base, port=launch.free_port()))
    cli = [python, "-m", "posttrain.cli", "run", str(recipe)]
    follower = subprocess.Popen([*cli, "--set", "stages.together.launch.machine_rank=1"], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    main = subprocess.Popen(cli, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    main_log, _ = main.communicate(timeout=300)
    follower_log, _ = follower.communicate(timeout=60)
    assert main.returncode == 0, main_log[-3000:]
    assert follower.returncode == 0, follower_log[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["together"]["metrics"] == {"num_processes": 2}, main_log[-6000:] + follower_log[-4000:]
    seen = [json.loads((out / "together" / f"rank_{i}.json").read_text()) for i in (0, 1)]
    assert [(s["process_index"], s["machine_rank"]) for s in seen] == [(0, 0), (1, 1)]
    assert json.loads((out / "before" / "rank_0.json").read_text())["num_processes"] == 1  # machine 0 alone
    assert "joining machine 0's launch as machine 1" in follower_log
    assert not (out / "together" / LAUNCH_NOTE).exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
