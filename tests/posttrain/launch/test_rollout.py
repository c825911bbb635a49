"""`posttrain run` starting and stopping a GRPO stage's rollout server (rollout_launch.py).

vLLM cannot run here, so a stand-in server (tests/posttrain/plugins/stand_in_rollout_server.py) answers /health
on 127.0.0.1 the way vLLM's does; what the run would start instead is checked against `posttrain rollout-server`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.core.errors import StageError
from posttrain.core.run_folder import RESOLVED_RECIPE
from posttrain.launch import rollout as rollout_launch
from posttrain.launch.accelerate import free_port, terminate
from posttrain.launch.rollout import SERVER_LOG, healthy, rollout_server_for, server_command, split_gpus, uses_server
from posttrain.recipe import Recipe, parse_recipe
from posttrain.run.lock import pid_alive
from posttrain.stages import KINDS

STAND_IN = Path(__file__).parents[1] / "plugins" / "stand_in_rollout_server.py"

RECIPE = """\
output_dir: {out}
model: {{name_or_path: {base}}}
stages:
  - name: sft
    kind: sft
    data: data.jsonl
  - name: grpo
    kind: grpo
    model: {model}
    data: {prompts}
    rewards: [{{name: math}}]
    launch: {{num_processes: {procs}}}
    rollout: {{backend: vllm, mode: server, server_port: {port}, start: {start}, gpus: {gpus}{more}}}
    trl: {{vllm_server_timeout: {wait}}}
"""


def grpo_recipe(tmp_path: Path, port: int, *, start: bool = True, gpus: str = "[0]", procs: int = 1,
                wait: float = 20, model: str = "sft", base: str = "/models/base", more: str = "",
                prompts: str = "prompts.jsonl") -> Recipe:
    text = RECIPE.format(out=tmp_path / "run", base=base, model=model, prompts=prompts, procs=procs, port=port,
                         start=str(start).lower(), gpus=gpus, more=more, wait=wait)
    return parse_recipe(text, kinds=KINDS, check=False)


def stand_in(port: int, *extra: str) -> list[str]:
    return [sys.executable, str(STAND_IN), "--port", str(port), *extra]


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout_launch, "POLL_S", 0.1)


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine showing four GPUs (what CUDA_VISIBLE_DEVICES says is all the split reads)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[int]:
    """A server already answering on a port (a teacher's `vllm serve`, one left running); yields the port."""
    port = free_port()
    proc = subprocess.Popen(stand_in(port), stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not healthy(f"http://127.0.0.1:{port}/health"):
        assert proc.poll() is None and time.monotonic() < deadline, "the stand-in server did not come up"
        time.sleep(0.1)
    yield port
    terminate(proc, grace_s=5)


def test_started_server_gets_its_gpus_the_stage_the_others_and_it_stops_after(tmp_path: Path, four_gpus: None) -> None:
    port, record = free_port(), tmp_path / "started.json"
    recipe = grpo_recipe(tmp_path, port, gpus="[1, 2]", procs=2)
    run_dir = tmp_path / "run"
    with rollout_server_for(recipe, recipe.stage("grpo"), run_dir,
                            command=stand_in(port, "--record", str(record), "--delay", "0.5")) as env:
        assert healthy(f"http://127.0.0.1:{port}/health")  # up before the stage starts
        assert env == {"CUDA_VISIBLE_DEVICES": "4,7"}  # the trainer's processes: the GPUs the server left
        started = json.loads(record.read_text())
        assert started["cuda_visible_devices"] == "5,6"  # rollout.gpus index the GPUs this machine shows
    assert not healthy(f"http://127.0.0.1:{port}/health")
    assert not pid_alive(started["pid"])
    assert f"listening on 127.0.0.1:{port}" in (run_dir / "grpo" / SERVER_LOG).read_text()


def test_the_server_stops_when_the_stage_fails(tmp_path: Path, four_gpus: None) -> None:
    port, record = free_port(), tmp_path / "started.json"
    recipe = grpo_recipe(tmp_path, port)
    with pytest.raises(KeyboardInterrupt), rollout_server_for(recipe, recipe.stage("grpo"), tmp_path / "run",
                                                              command=stand_in(port, "--record", str(record))):
        raise KeyboardInterrupt  # Ctrl-C mid-stage
    assert not pid_alive(json.loads(record.read_text())["pid"])
    assert not healthy(f"http://127.0.0.1:{port}/health")


def test_a_server_that_exits_before_answering_fails_the_stage_with_its_log(tmp_path: Path, four_gpus: None) -> None:
    port = free_port()
    recipe = grpo_recipe(tmp_path, port)
    with pytest.raises(StageError) as caught, rollout_server_for(recipe, recipe.stage("grpo"), tmp_path / "run",
                                                                 command=stand_in(port, "--exit-code", "3")):
        pytest.fail("the stage must not run without its server")
    message = str(caught.value)
    assert "exited with code 3 before it answered" in message
    assert "CUDA out of memory (stand-in)" in message  # the end of DIR/grpo/rollout_server.log
    assert str(tmp_path / "run" / "grpo" / SERVER_LOG) in message


def test_a_server_that_never_answers_is_stopped_after_the_wait(tmp_path: Path, four_gpus: None) -> None:
    port, record = free_port(), tmp_path / "started.json"
    recipe = grpo_recipe(tmp_path, port, wait=1)
    with pytest.raises(StageError, match=r"did not answer .* within 1s \(trl.vllm_server_timeout\)"), \
            rollout_server_for(recipe, recipe.stage("grpo"), tmp_path / "run",
                               command=stand_in(port, "--record", str(record), "--delay", "60")):
        pytest.fail("the stage must not run without its server")
    assert not pid_alive(json.loads(record.read_text())["pid"])


def test_a_port_something_already_answers_on_fails_before_starting_anything(tmp_path: Path, four_gpus: None,
                                                                            running: int) -> None:
    record = tmp_path / "started.json"
    recipe = grpo_recipe(tmp_path, running)
    with pytest.raises(StageError, match=r"something already answers at http://127\.0\.0\.1:.*rollout\.server_port"
                                          r".*--set stages\.grpo\.rollout\.start=false"), \
            rollout_server_for(recipe, recipe.stage("grpo"), tmp_path / "run",
                               command=stand_in(running, "--record", str(record))):
        pytest.fail("the stage must not run")
    assert not record.exists()


def test_without_start_the_run_waits_for_a_server_started_by_hand(tmp_path: Path, running: int) -> None:
    recipe = grpo_recipe(tmp_path, running, start=False)
    with rollout_server_for(recipe, recipe.stage("grpo"), tmp_path / "run") as env:
        assert env == {}  # the stage keeps every GPU: the user placed the server


def test_without_start_and_no_server_the_error_says_what_to_start(tmp_path: Path, four_gpus: None) -> None:
    port = free_port()
    recipe = grpo_recipe(tmp_path, port, start=False, gpus="[3]", wait=0.5)
    with pytest.raises(StageError) as caught, rollout_server_for(recipe, recipe.stage("grpo"), tmp_path / "run"):
        pytest.fail("the stage must not run without its server")
    message = str(caught.value)
    assert f"no rollout server answers at http://127.0.0.1:{port}/health after 0.5s" in message
    command = message.split("\n")[1].strip()
    assert command.startswith("CUDA_VISIBLE_DEVICES=7 ")  # rollout.gpus: [3] of 4,5,6,7
    assert shlex.split(command)[1:] == server_command(recipe.stage("grpo"), tmp_path / "run")
    assert "rollout: {start: true, gpus: [0]}" in message


def test_the_started_command_is_posttrain_rollout_server_for_the_stage(tmp_path: Path, capsys) -> None:
    """What `start: true` runs is the command a user would type, and `posttrain rollout-server` accepts it."""
    recipe = grpo_recipe(tmp_path, 8123, gpus="[0, 1]", more=", server_args: '--tensor-parallel-size 2'")
    run_dir = tmp_path / "run"
    (run_dir / "sft" / "model").mkdir(parents=True)
    (run_dir / "sft" / "model" / "config.json").write_text("{}")
    (run_dir / RESOLVED_RECIPE).write_text(recipe.to_yaml())  # what the runner writes before any stage
    command = server_command(recipe.stage("grpo"), run_dir)
    assert command[:4] == [sys.executable, "-m", "posttrain.cli", "rollout-server"]
    assert main([*command[3:], "--dry-run"]) == 0
    served = shlex.split(capsys.readouterr().out)[1:]
    opts = dict(zip(served[5::2], served[6::2], strict=False))
    assert served[4] == str(run_dir / "sft" / "model")  # the model the GRPO stage starts from
    assert (opts["--host"], opts["--port"]) == ("127.0.0.1", "8123")  # where its trainer looks
    assert opts["--data-parallel-size"] == "2" and opts["--tensor-parallel-size"] == "2"  # gpus, server_args


def test_the_gpu_split_refuses_what_cannot_work(tmp_path: Path, four_gpus: None) -> None:
    def split(gpus: str, procs: int = 1) -> tuple[list[str], list[str]]:
        stage = grpo_recipe(tmp_path, 8001, gpus=gpus, procs=procs).stage("grpo")
        return split_gpus(stage.rollout.gpus, stage)  # type: ignore[attr-defined]

    assert split("[0]", procs=3) == (["4"], ["5", "6", "7"])
    with pytest.raises(StageError, match=r"rollout.gpus \[4\]: this machine shows 4 GPU\(s\) \(4,5,6,7"):
        split("[4]")
    with pytest.raises(StageError, match="takes every GPU of this machine"):
        split("[0, 1, 2, 3]")
    with pytest.raises(StageError, match="asks for 4 processes per machine, but only 3 GPU"):
        split("[0]", procs=4)


def test_only_server_mode_stages_have_a_server(tmp_path: Path) -> None:
    recipe = grpo_recipe(tmp_path, 8001, start=False)
    assert uses_server(recipe.stage("grpo")) and not uses_server(recipe.stage("sft"))
    colocated = parse_recipe(recipe.to_yaml().replace("mode: server", "mode: colocate"), kinds=KINDS, check=False)
    assert not uses_server(colocated.stage("grpo"))
    with rollout_server_for(recipe, recipe.stage("sft"), tmp_path / "run") as env:
        assert env == {}


def test_a_run_whose_rollout_port_is_taken_fails_the_grpo_stage_and_says_why(tmp_path: Path, tiny_base: Path,
                                                                          running: int) -> None:
    """Through `posttrain run`'s runner: the stage fails with the reason before anything is started or trained."""
    from posttrain.run.runner import run_recipe

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "solution": "2"}) + "\n")
    recipe = grpo_recipe(tmp_path, running, model="base", base=str(tiny_base), prompts=str(prompts))
    report = run_recipe(recipe, only=["grpo"])
    entry = report["stages"]["grpo"]
    assert entry["status"] == "failed"
    assert "something already answers" in entry["metrics"]["error"]
    assert not (tmp_path / "run" / "grpo" / SERVER_LOG).exists()


CHILD = """\
import sys, time
from pathlib import Path
from tests.posttrain.launch.test_rollout import grpo_recipe, stand_in
from posttrain.launch.rollout import rollout_server_for
tmp, port, record = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
recipe = grpo_recipe(tmp, port)
with rollout_server_for(recipe, recipe.stage("grpo"), tmp / "run", command=stand_in(port, "--record", record)):
    print("up", flush=True)
    time.sleep(120)
"""


def test_the_server_stops_when_the_run_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives the run no `finally`: the server still goes (the kernel's parent-death signal), port and all."""
    port, record = free_port(), tmp_path / "started.json"
    root = Path(__file__).resolve().parents[3]
    run = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(port), str(record)], cwd=root,
                           stdout=subprocess.PIPE, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "4,5"})
    try:
        assert run.stdout is not None and run.stdout.readline().strip() == "up"
        server_pid = json.loads(record.read_text())["pid"]
        assert pid_alive(server_pid) and healthy(f"http://127.0.0.1:{port}/health")
        run.kill()
        run.wait(timeout=30)
        deadline = time.monotonic() + 30
        while pid_alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(server_pid), "the rollout server outlived the killed run"
        assert not healthy(f"http://127.0.0.1:{port}/health")
    finally:
        run.kill()
