"""`make gpu-check`'s CPU side: arguments, the table, the skip rows, the no-GPU exit, and the checks a CPU can run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.gpu_check import (
    CHECKS,
    CPU,
    GPU,
    Row,
    Skip,
    check_in_child,
    compare_greedy,
    main,
    parse_args,
    recipe,
    table,
)
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
    gpu = recipe(tmp_path, GPU, bf16=True)  # (TRL refuses bf16 options on a CPU: not parsed here)
    assert gpu["model"]["dtype"] == "bfloat16" and gpu["stages"][1]["trl"]["bf16"] is True  # bf16 model and training
    rec = parse_recipe(yaml.safe_dump(recipe(tmp_path, CPU, bf16=False)), kinds=KINDS)
    assert rec.model.dtype == "auto"
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


def test_the_gpu_model_is_about_100m_parameters_that_vllm_can_build() -> None:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from posttrain.core.tiny import TINY_DEFAULTS
    from posttrain.core.vllm_limits import mla_problem

    config = {**TINY_DEFAULTS, **GPU.model}
    assert mla_problem(config) is None  # vLLM's MLA prefill and decode backends take its head sizes
    assert mla_problem({**TINY_DEFAULTS, **CPU.model}) is not None  # the CPU sizes never meet vLLM
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(DeepseekV3Config(**config, vocab_size=512))
    assert 95e6 < sum(p.numel() for p in model.parameters()) < 110e6


def test_the_greedy_check_accepts_near_ties_and_nothing_else(tiny_base: Path) -> None:
    """Real greedy completions of the tiny model; "vLLM's" differ from them where a test swaps one pick for the
    runner-up: the gap is the model's own, and the verdict follows the thresholds."""
    from posttrain.core.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(str(tiny_base)).eval(), load_tokenizer(str(tiny_base))
    eos = tok.eos_token_id

    def next_logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)

    prompts = [tok(f"Compute {a}+{a}.")["input_ids"] for a in range(1, 11)]
    ours = []
    for ids in prompts:
        out = [*ids]
        for _ in range(3):
            out.append(int(next_logprobs(out).argmax()))
        ours.append(out[len(ids):])
    theirs = [list(o) for o in ours]
    logp = next_logprobs(prompts[3] + ours[3][:1])
    top2 = logp.topk(2).indices.tolist()
    theirs[3] = [ours[3][0], top2[1]]  # differs at the second token: the runner-up instead of the greedy pick
    gap = float(logp[top2[0]] - logp[top2[1]])
    ok, detail = compare_greedy(prompts, ours, ours, next_logprobs, eos)
    assert ok and detail == "10/10 greedy completions identical"
    ok, detail = compare_greedy(prompts, ours, theirs, next_logprobs, eos, min_agreement=0.9, max_gap=gap + 1e-4)
    assert ok and detail.startswith("9/10 greedy completions identical") and f"{gap:.3f} nats" in detail
    assert "(prompt 3, token 1;" in detail
    assert not compare_greedy(prompts, ours, theirs, next_logprobs, eos, max_gap=gap - 1e-4)[0]  # not a near-tie
    assert not compare_greedy(prompts, ours, theirs, next_logprobs, eos, min_agreement=0.95, max_gap=1e9)[0]
    # A completion that stops early picked EOS where the other went on: that pick is compared.
    ok, detail = compare_greedy(prompts[:1], ours[:1], [ours[0][:1]], next_logprobs, eos, min_agreement=0, max_gap=1e9)
    assert ok and "(prompt 0, token 1;" in detail


def test_colocated_vllm_is_skipped_where_the_grpo_stage_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from posttrain.core import vllm_limits
    from tests import fake_vllm

    fake_vllm.install(monkeypatch)
    monkeypatch.setattr(vllm_limits, "current_gpu", lambda: ((10, 0), False))  # a B200
    with pytest.raises(Skip, match=r"refuses colocate mode for MoE models here: .*FlashInfer"):
        check_in_child("vllm_colocate")(tmp_path, GPU, "cuda")


@pytest.mark.slow
def test_the_cpu_run_trains_resumes_and_skips_what_is_not_installed(tmp_path: Path, capsys) -> None:
    """Without vLLM and DeepSpeed: SFT and GRPO (transformers rollouts) train, with their throughput and peak
    memory; the rest says why it is skipped."""
    only = "sft,grpo,vllm_greedy,vllm_colocate,zero3_lora,resume"
    code = main(["--device", "cpu", "--out", str(tmp_path), "--only", only])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line.split()[0]: line for line in out.splitlines()[-9:] if line.split() and line.split()[0] in CHECKS}
    assert "ok" in rows["sft"].split() and "M params, f32" in rows["sft"] and "tokens/s" in rows["sft"]
    assert "ok" in rows["grpo"].split() and "tokens/s, peak RSS" in rows["grpo"]
    assert "ok" in rows["resume"].split() and "resumed from checkpoint-" in rows["resume"]
    for name, module in (("vllm_greedy", "vllm"), ("vllm_colocate", "vllm"), ("zero3_lora", "deepspeed")):
        expected = "skipped: not installed" if importlib.util.find_spec(module) is None else "skipped: needs a GPU"
        assert expected in rows[name]
