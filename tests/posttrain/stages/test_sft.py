from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_pipelines.tasks.arithmetic import solution_text, train_prompts
from posttrain.core.models import load_causal_lm
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.training.lora import LoraSpec, apply_lora, targeted_parts
from posttrain.training.moe_balance import find_routers
from tests.posttrain.conftest import BuiltReport
from tests.posttrain.report.fake_run import last_third_mean, sft_rows, stage_sections
from tests.posttrain.stages.interrupt import last_checkpoint, sigterm_once_written, start_run

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: sft
    kind: sft
    data: {data}
    moe_balance: {{bias_update_speed: 0.01}}
{extra}    trl: {{max_steps: {steps}, per_device_train_batch_size: 16, learning_rate: 2.0e-3, logging_steps: 2,
           save_steps: {save}, lr_scheduler_type: constant, max_length: 64}}
"""


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sft") / "data.jsonl"
    with open(path, "w") as f:
        for r in train_prompts(256, seed=1):
            f.write(json.dumps({"prompt": r["prompt"], "completion": solution_text(r["a"], r["b"]), "x": 1}) + "\n")
    return path


def recipe(out: Path, base: Path, data: Path, steps: int = 12, save: int = 100, extra: str = "") -> str:
    return RECIPE.format(out=out, base=base, data=data, steps=steps, save=save, extra=extra)


def test_sft_trains_balances_and_logs(tmp_path: Path, tiny_base: Path, sft_data: Path) -> None:
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, sft_data), kinds=KINDS))
    entry = report["stages"]["sft"]
    assert entry["status"] == "done", entry
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10, 12]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert {"moe/max_violation", "moe/max_violation/layer_1", "moe/load/layer_3"} <= set(steps[0])
    assert len(steps[0]["moe/load/layer_1"]) == 8 and sum(steps[0]["moe/load/layer_1"]) == pytest.approx(1, abs=1e-3)
    assert entry["metrics"]["max_violation_last_third"] >= 0
    # The trained model, with its updated router biases, is saved where later stages look.
    model = load_causal_lm(str(tmp_path / "sft" / "model"))
    biases = torch.stack([r.e_score_correction_bias for _, r in find_routers(model)])
    assert biases.abs().max() > 0
    assert (tmp_path / "sft" / "model" / "tokenizer.json").exists()


def test_missing_column_is_a_clear_failure(tmp_path: Path, tiny_base: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"question": "q", "completion": "c"}) + "\n")
    report = run_recipe(parse_recipe(recipe(tmp_path / "out", tiny_base, data), kinds=KINDS))
    entry = report["stages"]["sft"]
    assert entry["status"] == "failed"
    assert "no column(s) ['prompt']" in entry["metrics"]["error"]


def test_lora_targets_cover_every_requested_part(tiny_base: Path) -> None:
    model = apply_lora(load_causal_lm(str(tiny_base)), LoraSpec(r=4, alpha=8))
    found = targeted_parts(model)
    assert "model.layers.0.mlp.gate_proj" in found["dense_mlp"]  # peft's defaults skip these...
    assert "model.layers.1.mlp.shared_experts.down_proj" in found["shared_experts"]  # ...and these
    assert any(n.startswith("model.layers.3.mlp.experts") for n in found["routed_experts"])
    assert "model.layers.2.self_attn.kv_b_proj" in found["attention"]
    assert len(found["dense_mlp"]) == 3 and len(found["shared_experts"]) == 9
    only = targeted_parts(apply_lora(load_causal_lm(str(tiny_base)), LoraSpec(r=4, targets=["shared_experts"])))
    assert only["attention"] == [] and only["dense_mlp"] == [] and only["routed_experts"] == []
    assert len(only["shared_experts"]) == 9


def test_lora_sft_saves_a_merged_model(tmp_path: Path, tiny_base: Path, sft_data: Path) -> None:
    text = recipe(tmp_path, tiny_base, sft_data, steps=4, extra="    lora: {r: 4, alpha: 8}\n")
    report = run_recipe(parse_recipe(text.replace("2.0e-3", "1.0e-2"), kinds=KINDS))
    assert report["stages"]["sft"]["status"] == "done", report
    merged = load_causal_lm(str(tmp_path / "sft" / "model"))
    base = load_causal_lm(str(tiny_base))
    assert not any("lora" in k for k in merged.state_dict())
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert "model.layers.0.mlp.gate_proj.weight" in changed
    assert "model.layers.1.mlp.shared_experts.up_proj.weight" in changed
    assert "model.embed_tokens.weight" not in changed
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").exists()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_to_the_same_model(
    tmp_path: Path, tiny_base: Path, sft_data: Path, python: str
) -> None:
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    path = tmp_path / "r.yaml"
    path.write_text(recipe(killed, tiny_base, sft_data, steps=40, save=1000))
    sigterm_once_written(start_run(python, path), killed / "sft" / "metrics.jsonl", 3, wait_s=120)
    checkpoint, stopped_at = last_checkpoint(killed / "sft")
    assert 6 <= stopped_at < 40

    proc = start_run(python, path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"resuming from {checkpoint}" in err
    # The reference, uninterrupted, in process: the same runner the command calls, without a third start-up.
    reference = run_recipe(parse_recipe(recipe(ref, tiny_base, sft_data, steps=40, save=1000), kinds=KINDS))
    assert reference["stages"]["sft"]["status"] == "done"
    a = load_causal_lm(str(killed / "sft" / "model")).state_dict()
    b = load_causal_lm(str(ref / "sft" / "model")).state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


@pytest.mark.slow
def test_two_processes_under_accelerate_keep_biases_in_sync(tmp_path: Path, tiny_base: Path, sft_data: Path) -> None:
    text = recipe(tmp_path, tiny_base, sft_data, steps=6, extra="    launch: {num_processes: 2}\n")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    entry = report["stages"]["sft"]
    assert entry["status"] == "done", entry
    assert entry["metrics"]["bias_sync_max_diff"] == 0.0
    assert entry["metrics"]["steps"] == 6
    model = load_causal_lm(str(tmp_path / "sft" / "model"))
    assert torch.stack([r.e_score_correction_bias for _, r in find_routers(model)]).abs().max() > 0


def test_report_section(full_report: BuiltReport) -> None:
    """SFT: loss first → last, MaxVio with and without balancing, computed here from the logs."""
    sec = stage_sections(full_report.md)
    rows = sft_rows(0.001)
    base_rows = sft_rows(0.0)
    assert f"{rows[0]['loss']:.4g} (step 10) → {rows[-2]['loss']:.4g} (step 300)" in sec["sft"]
    assert f"mean over the last third of steps {last_third_mean(rows, 'moe/max_violation'):.4g}" in sec["sft"]
    assert (f"MaxVio of the comparison run, γ = 0 (no balancing): {base_rows[0]['moe/max_violation']:.4g} (step 10)"
            in sec["sft"])
    assert f"mean over the last third {last_third_mean(base_rows, 'moe/max_violation'):.4g}" in sec["sft"]
    assert "bias update speed γ = 0.001, α = 0.0001" in sec["sft"]
