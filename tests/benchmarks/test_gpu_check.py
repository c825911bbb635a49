"""`make gpu-check`'s CPU side: arguments, the table, the skip rows, the no-GPU exit, and the checks a CPU can run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.gpu_check import CHECKS, CPU, Row, main, parse_args, recipe, table
from posttrain.core.errors import RecipeError
from posttrain.recipe import parse_recipe
from posttrain.stages import KINDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run")
def test_without_a_gpu_it_says_so_and_exits_0(capsys) -> None:
    assert main([]) == 0
    assert "no GPU found" in capsys.readouterr().out


def test_arguments_name_the_checks() -> None:
    assert parse_args([]).checks == CHECKS
    assert parse_args(["--only", "sft, resume"]).checks == ("sft", "resume")
    with pytest.raises(SystemExit) as exc:
        parse_args(["--only", "sft,warp_drive"])
    assert exc.value.code == 2


def test_the_table_has_one_aligned_row_per_check() -> None:
    text = table([Row("sft", "ok", "51,234 tokens/s, peak 3.10 GiB", 12.4),
                  Row("zero3_lora", "skipped: not installed", "", 0.0)])
    lines = text.splitlines()
    assert lines[0].split() == ["check", "status", "figures", "s"]
    assert lines[2].startswith("sft ") and lines[2].endswith(" 12")
    assert lines[3].startswith("zero3_lora  skipped: not installed")
    assert lines[2].index("ok") == lines[3].index("skipped")  # columns line up


def test_its_recipes_are_valid_recipes(tmp_path: Path) -> None:
    rec = parse_recipe(yaml.safe_dump(recipe(tmp_path, CPU, bf16=False)), kinds=KINDS)
    assert [s.name for s in rec.stages] == ["distill", "sft", "grpo", "sft_zero3", "sft_resume"]
    vllm_text = yaml.safe_dump(recipe(tmp_path, CPU, bf16=False, vllm=True))
    with pytest.raises(RecipeError, match=r"model: file not found: .*sft_bf16"):  # the vLLM checks write it
        parse_recipe(vllm_text, kinds=KINDS)
    (tmp_path / "sft_bf16").mkdir()
    rec = parse_recipe(vllm_text, kinds=KINDS)
    assert [s.name for s in rec.stages] == ["distill", "sft", "grpo", "grpo_vllm", "sft_zero3", "sft_resume"]
    assert rec.stage("grpo_vllm").rollout.backend == "vllm"


def test_a_vllm_child_reports_a_failure_as_json(tmp_path: Path, capsys) -> None:
    assert main(["--child", "vllm_colocate", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] is False and result["detail"]


@pytest.mark.slow
def test_the_cpu_run_trains_resumes_and_skips_what_is_not_installed(tmp_path: Path, capsys) -> None:
    only = "sft,vllm_greedy,vllm_colocate,zero3_lora,resume"
    code = main(["--device", "cpu", "--out", str(tmp_path), "--only", only])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line.split()[0]: line for line in out.splitlines()[-8:] if line.split() and line.split()[0] in CHECKS}
    assert "ok" in rows["sft"].split() and "tokens/s" in rows["sft"]
    assert "ok" in rows["resume"].split() and "resumed from checkpoint-" in rows["resume"]
    for name, module in (("vllm_greedy", "vllm"), ("vllm_colocate", "vllm"), ("zero3_lora", "deepspeed")):
        expected = "skipped: not installed" if importlib.util.find_spec(module) is None else "skipped: needs a GPU"
        assert expected in rows[name]
