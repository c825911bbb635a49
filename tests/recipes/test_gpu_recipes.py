"""The GPU recipes users copy (recipes/*-gpu.yaml, *-1gpu.yaml, *-8gpu.yaml): what can be checked without a GPU."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from posttrain.recipe import load_recipe
from posttrain.stages import KINDS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
GPU_RECIPES = ["r1-math-gpu.yaml", "qwen2.5-math-1gpu.yaml", "moe-lite-8gpu.yaml"]


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_rollout_servers_fit_the_machine_and_never_take_a_teachers_port(name: str) -> None:
    recipe = load_recipe(RECIPES / name, kinds=KINDS, check=False)
    teacher_ports = {urlparse(s.teacher.base_url).port for s in recipe.stages
                     if s.kind == "distill" and getattr(s.teacher, "base_url", None)}
    for stage in recipe.stages:
        rollout = getattr(stage, "rollout", None)
        if rollout is None or rollout.mode != "server":
            continue
        assert rollout.server_port not in teacher_ports, stage.name
        assert rollout.start, f"{stage.name}: a whole-recipe run should start its own rollout server"
        assert len(rollout.gpus) + stage.launch.processes_per_machine <= 8, stage.name


def test_the_small_dense_recipe_needs_one_gpu() -> None:
    recipe = load_recipe(RECIPES / "qwen2.5-math-1gpu.yaml", kinds=KINDS, check=False)
    grpo = recipe.stage("grpo")
    assert grpo.launch.num_processes == 1 and grpo.rollout.mode == "colocate"  # type: ignore[attr-defined]
    assert {s.benchmark for s in recipe.stages if s.kind == "eval"} == {"gsm8k", "math500"}  # type: ignore[attr-defined]


def test_the_moe_recipe_balances_what_its_router_has() -> None:
    """DeepSeek-V2 routers have no correction bias: γ off, the sequence-wise loss on (README's family table)."""
    grpo = load_recipe(RECIPES / "moe-lite-8gpu.yaml", kinds=KINDS, check=False).stage("grpo")
    assert grpo.moe_balance.bias_update_speed == 0 and grpo.moe_balance.seq_aux_loss_coef > 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_a_started_rollout_server_gets_time_for_a_cold_start(name: str) -> None:
    """TRL waits 240 s by default; a 16B-class checkpoint's first start (weights, compilation, CUDA graphs) can take
    longer, and the stage would fail with its server still loading."""
    recipe = load_recipe(RECIPES / name, kinds=KINDS, check=False)
    for stage in recipe.stages:
        rollout = getattr(stage, "rollout", None)
        if rollout is not None and rollout.mode == "server":
            assert stage.trl.get("vllm_server_timeout", 240) >= 600, stage.name


def _commands(markdown: str) -> list[list[list[str]]]:
    """The shell commands of each ```bash block (continuation lines joined, comments dropped), as argument lists."""
    import shlex

    blocks = []
    for block in markdown.split("```bash\n")[1:]:
        text = block.split("```")[0].replace("\\\n", " ")
        blocks.append([shlex.split(line, comments=True) for line in text.splitlines() if line.strip()])
    return blocks


def test_the_manual_server_commands_match_the_recipe_they_are_for() -> None:
    """docs/gpu.md: with a server started by hand, the run must not start its own (the recipe says `start: true`):
    it would find the hand-started one on its port and stop, or start a second one on the trainer's GPUs."""
    docs = (RECIPES.parent / "docs" / "gpu.md").read_text()
    checked = 0
    for block in _commands(docs):
        servers = [c for c in block if "rollout-server" in c]
        if not servers:
            continue
        for cmd in block:
            if "run" not in cmd or "posttrain" not in " ".join(cmd):
                continue
            args = cmd[cmd.index("run") + 1:]
            sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            stages = next((args[i + 1].split(",") for i, a in enumerate(args) if a == "--stages"), None)
            served = servers[0][servers[0].index("rollout-server") + 1]
            assert args[0] == served, "the run and the server read the same recipe"
            recipe = load_recipe(RECIPES.parent / args[0], sets, kinds=KINDS, check=False)
            for stage in recipe.stages:
                rollout = getattr(stage, "rollout", None)
                if rollout is not None and rollout.mode == "server" and (stages is None or stage.name in stages):
                    assert not rollout.start, f"{' '.join(cmd)}: stage {stage.name} would start its own server"
                    checked += 1
    assert checked >= 1
