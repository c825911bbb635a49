"""Which rollouts a GRPO stage asks TRL for (`_rollout_args`), where vLLM 0.31 would fail or run wrong.

vLLM stands in (tests/fake_vllm.py); the GPU is named where its kind decides (there is none here).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from posttrain.core import vllm_limits
from posttrain.core.errors import StageError
from posttrain.recipe import parse_recipe
from posttrain.stages import KINDS
from posttrain.stages.base import StageContext
from posttrain.stages.grpo import _rollout_args
from tests import fake_vllm
from tests.posttrain.core.test_vllm_limits import DEEPSEEK_V3


def context(base: Path, tmp_path: Path, rollout: str) -> StageContext:
    recipe = parse_recipe(f"""\
output_dir: {tmp_path / "run"}
model: {{name_or_path: {base}}}
stages:
  - {{name: grpo, kind: grpo, data: prompts.jsonl, rewards: [{{name: math}}], rollout: {rollout}}}
""", kinds=KINDS, check=False)
    return StageContext(recipe, recipe.stages[0], tmp_path / "run", str(base), logging.getLogger("test.grpo"))


def args(ctx: StageContext) -> dict[str, Any]:
    return _rollout_args(ctx.config, ctx)  # type: ignore[arg-type]


@pytest.fixture
def vllm_sizes(tiny_base: Path, tmp_path: Path) -> Path:
    """The tiny DeepSeek-V3 with DeepSeek-V3's MLA sizes in its config (vLLM would build it)."""
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_base, out)
    config = json.loads((out / "config.json").read_text())
    keys = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    (out / "config.json").write_text(json.dumps({**config, **{k: DEEPSEEK_V3[k] for k in keys}}))
    return out


def test_a_model_vllm_cannot_build_is_refused_or_left_to_transformers(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_vllm.install(monkeypatch)
    with pytest.raises(StageError, match=r"rollout.backend vllm: .* cannot run in vLLM: .*\(16, 16, 32\)"):
        args(context(tiny_base, tmp_path, "{backend: vllm}"))
    import torch

    auto = context(tiny_base, tmp_path, "{backend: auto}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto picks vLLM only on a GPU
    with caplog.at_level(logging.INFO):
        assert args(auto) == {"use_vllm": False}
    assert "not vLLM" in caplog.text and "transformers generation in process" in caplog.text


def test_colocated_moe_rollouts_are_refused_where_vllms_moe_kernel_re_lays_the_experts(
    vllm_sizes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_vllm.install(monkeypatch)
    monkeypatch.setattr(vllm_limits, "current_gpu", lambda: ((10, 0), False))  # a B200
    with pytest.raises(StageError, match=r"colocate mode on this GPU .* FlashInfer.* use rollout.mode: server"):
        args(context(vllm_sizes, tmp_path, "{backend: vllm, mode: colocate}"))
    server = args(context(vllm_sizes, tmp_path, "{backend: vllm, mode: server}"))
    assert server["use_vllm"] and server["vllm_mode"] == "server"  # server mode reloads the experts properly
    monkeypatch.setattr(vllm_limits, "current_gpu", lambda: ((9, 0), False))  # an H100: Triton, loaded as is
    colocate = args(context(vllm_sizes, tmp_path, "{backend: vllm, mode: colocate, gpu_memory_utilization: 0.4}"))
    assert colocate == {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.4}


def test_the_report_shows_the_draft_acceptance_when_rollouts_were_speculative(tmp_path: Path) -> None:
    from posttrain.core.run_folder import MTP_ACCEPTANCE
    from posttrain.report import write_report
    from tests.posttrain.report.fake_run import grpo_rows, make_run, png_info, stage_sections, write_jsonl

    run = make_run(tmp_path)
    rows = grpo_rows()
    for i, row in enumerate(rows):
        row[MTP_ACCEPTANCE] = round(0.8 - 0.001 * i, 4)  # a drafter falling behind the policy
    write_jsonl(run / "grpo" / "metrics.jsonl", rows)
    section = stage_sections(write_report(run, kinds=KINDS).read_text())["grpo"]
    assert "- MTP draft acceptance: 0.8 (step" in section
    assert png_info(run / "plots" / "grpo_dynamics.png")["data"]["series"][MTP_ACCEPTANCE] == len(rows)
