"""The final save of a trainer stage: whole weights however training was sharded, LoRA merged on a reload.

The ZeRO-3 test runs DeepSpeed for real in one CPU process (skipped where DeepSpeed is not installed:
`POSTTRAIN_EXTRAS=dev,deepspeed make setup`), with every parameter partitioned (persistence threshold 0), so
the unwrapped model's own tensors are empty and only a gathered save can write the weights.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_pipelines.tasks.arithmetic import solution_text, train_prompts
from posttrain.core.models import load_causal_lm
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.training.moe_balance import find_routers

STAGE = """\
  - name: {name}
    kind: sft
    data: {data}
    moe_balance: {{bias_update_speed: 0.01}}
{extra}    trl: {{max_steps: 3, per_device_train_batch_size: 4, logging_steps: 1, max_length: 48,
           learning_rate: 1.0e-2{trl}}}
"""


@pytest.fixture(scope="module")
def sft_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("saving") / "data.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": solution_text(r["a"], r["b"])}) + "\n"
                            for r in train_prompts(32, seed=1)))
    return path


def recipe(out: Path, base: Path, stages: str) -> str:
    return f"output_dir: {out}\nseed: 0\nmodel: {{name_or_path: {base}}}\nstages:\n{stages}"


def saved(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def router_biases(model_dir: Path) -> torch.Tensor:
    return torch.stack([r.e_score_correction_bias for _, r in find_routers(load_causal_lm(str(model_dir)))])


def test_lora_is_merged_on_a_reload_and_keeps_what_balancing_moved(tmp_path: Path, tiny_base: Path,
                                                                  sft_rows: Path) -> None:
    """The router biases are buffers, not LoRA weights: the merged model must carry the trained ones."""
    stages = STAGE.format(name="sft", data=sft_rows, extra="    lora: {r: 4, alpha: 8}\n", trl="")
    report = run_recipe(parse_recipe(recipe(tmp_path, tiny_base, stages), kinds=KINDS))
    assert report["stages"]["sft"]["status"] == "done", report
    model_dir = tmp_path / "sft" / "model"
    assert not any("lora" in k for k in saved(model_dir))
    biases = router_biases(model_dir)
    assert biases.dtype == torch.float32 and biases.abs().max() >= 0.01  # moved from the base's zeros
    base = load_causal_lm(str(tiny_base)).state_dict()
    merged = load_causal_lm(str(model_dir)).state_dict()
    assert not torch.equal(merged["model.layers.0.self_attn.kv_b_proj.weight"],
                           base["model.layers.0.self_attn.kv_b_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


ZERO3_JSON = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "train_batch_size": "auto", "gradient_clipping": "auto"}
ZERO3_YAML = """\
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  deepspeed_config_file: {json}
  zero3_init_flag: true
num_machines: 1
num_processes: 1
machine_rank: 0
rdzv_backend: static
same_network: true
use_cpu: true
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_zero3_in_one_process_loads_partitioned_and_saves_whole_models(
    tmp_path: Path, tiny_base: Path, sft_rows: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """bf16 ZeRO-3: the model is loaded after the TRL config, so partitioned; the final save gathers the shards
    (the config leaves the 16-bit gather flag off); LoRA is merged on a reload; router biases stay float32."""
    (tmp_path / "zero3.json").write_text(json.dumps(ZERO3_JSON))
    (tmp_path / "zero3.yaml").write_text(ZERO3_YAML.format(json=tmp_path / "zero3.json"))
    launch = f"    launch: {{config_file: {tmp_path / 'zero3.yaml'}}}\n"
    stages = (STAGE.format(name="full", data=sft_rows, extra=launch, trl=", bf16: true, use_cpu: true")
              + STAGE.format(name="lora", data=sft_rows, extra=launch + "    lora: {r: 4, alpha: 8}\n",
                             trl=", bf16: true, use_cpu: true, save_steps: 3"))
    text = recipe(tmp_path / "run", tiny_base, stages)
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    err = capfd.readouterr().err
    assert {n: e["status"] for n, e in report["stages"].items()} == {"full": "done", "lora": "done"}, err[-3000:]
    assert err.count("ZeRO-3 loaded the model partitioned") == 2
    base = saved(tiny_base)
    for name in ("full", "lora"):
        tensors = saved(tmp_path / "run" / name / "model")
        assert not [k for k, t in tensors.items() if t.numel() == 0]
        assert {k: t.shape for k, t in tensors.items()} == {k: t.shape for k, t in base.items()}
        biases = {k: t for k, t in tensors.items() if k.endswith("e_score_correction_bias")}
        assert biases and {t.dtype for t in biases.values()} == {torch.float32}
        assert max(t.abs().max() for t in biases.values()) >= 0.01  # γ steps, kept by fp32
        assert tensors["model.layers.0.self_attn.kv_b_proj.weight"].dtype == torch.bfloat16  # as trained
        changed = (tensors["model.layers.0.self_attn.kv_b_proj.weight"].float()
                   - base["model.layers.0.self_attn.kv_b_proj.weight"]).abs().max()
        assert changed > 1e-3

    # A run stopped after its last step only saves: the engine loads its sharded checkpoint, trains nothing.
    first = saved(tmp_path / "run" / "lora" / "model")
    shutil.rmtree(tmp_path / "run" / "lora" / "model")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert report["stages"]["lora"]["status"] == "done" and report["stages"]["lora"]["metrics"]["steps"] == 3
    assert "training finished earlier (step 3 of 3)" in capfd.readouterr().err
    again = saved(tmp_path / "run" / "lora" / "model")
    assert all(torch.equal(first[k], again[k]) for k in first)
