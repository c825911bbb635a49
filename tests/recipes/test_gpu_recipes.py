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
