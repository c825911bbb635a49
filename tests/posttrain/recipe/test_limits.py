"""Lengths against the model's context and the logits of a micro-batch, checked when a recipe is validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.core.errors import RecipeError
from posttrain.core.tiny import TINY_DEFAULTS
from posttrain.recipe import parse_recipe
from posttrain.recipe.limits import MTP_BYTES_PER_LOGIT, fused_head_tile, logits_gb
from posttrain.stages import KINDS


def checkpoint(tmp_path: Path, context: int, vocab: int) -> Path:
    """A local checkpoint folder as far as validation reads it: its config.json."""
    path = tmp_path / f"ckpt-{context}-{vocab}"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2", "max_position_embeddings": context,
                                                  "vocab_size": vocab}))
    (tmp_path / "rows.jsonl").write_text('{"prompt": "p", "completion": "c", "solution": "1"}\n')
    return path


def recipe(model: Path | str, stages: str, tmp_path: Path) -> str:
    return f"output_dir: {tmp_path / 'run'}\nmodel: {{name_or_path: {model}}}\nstages:\n{stages}"


SFT = "  - {{name: sft, kind: sft, data: {rows}, trl: {{max_length: {n}}}}}\n"
GRPO = ("  - {{name: grpo, kind: grpo, model: sft, data: {rows}, rewards: [{{name: math}}],\n"
        "     trl: {{max_completion_length: {n}, per_device_train_batch_size: {b}, num_generations: 4}}{launch}}}\n")
EVAL = ("  - {{name: eval, kind: eval, model: {model}, data: {rows}, samples: 0,\n"
        "     sampling: {{max_new_tokens: {n}}}{generation}}}\n")


def problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text, kinds=KINDS)
    return caught.value.problems


def test_training_lengths_beyond_the_context_are_problems(tmp_path: Path) -> None:
    ckpt, rows = checkpoint(tmp_path, 4096, 1000), tmp_path / "rows.jsonl"
    text = recipe(ckpt, SFT.format(rows=rows, n=8192) + GRPO.format(rows=rows, n=4096, b=8, launch="")
                  + EVAL.format(model="grpo", rows=rows, n=5000, generation=""), tmp_path)
    found = problems(text)
    assert len(found) == 2, found
    assert "stages[0].trl.max_length: 8192 tokens exceed the context of" in found[0] and "(4096 tokens" in found[0]
    assert "stages[1].trl.max_completion_length: 4096 tokens leave no room for the prompt" in found[1]


def test_new_tokens_beyond_the_context_are_a_warning_generation_clips(tmp_path: Path) -> None:
    """A benchmark preset's long budget on a small model is what a user expects to just run: it is clipped."""
    ckpt, rows = checkpoint(tmp_path, 4096, 1000), tmp_path / "rows.jsonl"
    text = recipe(ckpt, SFT.format(rows=rows, n=4096) + GRPO.format(rows=rows, n=3072, b=8, launch="")
                  + EVAL.format(model="grpo", rows=rows, n=5000, generation=""), tmp_path)
    notes: list[str] = []
    parse_recipe(text, kinds=KINDS, notes=notes)
    # The eval's model is GRPO's, which is SFT's, which is the base: the base's context applies.
    assert any("stages[2].sampling.max_new_tokens: 5000 new tokens leave no room for the prompt" in n
               and "clips them" in n for n in notes), notes


def test_lengths_within_the_context_and_other_engines_pass(tmp_path: Path) -> None:
    ckpt, rows = checkpoint(tmp_path, 4096, 1000), tmp_path / "rows.jsonl"
    served = ", generation: {backend: openai, model: served, base_url: 'http://127.0.0.1:8000/v1'}"
    remote = EVAL.format(model="grpo", rows=rows, n=9000, generation=served).replace("name: eval,", "name: eval2,")
    text = recipe(ckpt, SFT.format(rows=rows, n=4096) + GRPO.format(rows=rows, n=3072, b=8, launch="")
                  + EVAL.format(model="grpo", rows=rows, n=3000, generation="") + remote, tmp_path)
    parse_recipe(text, kinds=KINDS)  # an openai engine's context is the server's business


def test_the_tiny_models_context_is_its_option(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "p", "completion": "c"}\n')
    text = ("model: {tiny: {max_position_embeddings: 256}}\ntokenizer: {train: {corpus: "
            "data_pipelines.tasks.arithmetic:corpus}}\nstages:\n" + SFT.format(rows=rows, n=300))
    assert "(256 tokens" in problems(text)[0]


def test_trls_fused_head_never_holds_a_micro_batchs_logits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """4k-token completions, a 152k vocabulary, 16 rows: ~60 GB of logits if they were materialised, as the first
    estimate assumed (and warned on both MoE recipes); TRL 1.16 projects one tile of them at a time."""
    assert fused_head_tile() == (4096, 32768)  # what the pinned TRL's fused LM head projects at once
    assert logits_gb(16, 4096, 151936) == pytest.approx(4096 * 32768 * 2 / 1e9)
    assert logits_gb(1, 100, 1000) == pytest.approx(100 * 1000 * 2 / 1e9)  # a batch smaller than a tile
    ckpt, rows = checkpoint(tmp_path, 32768, 151936), tmp_path / "rows.jsonl"
    path = tmp_path / "r.yaml"
    path.write_text(recipe(ckpt, SFT.format(rows=rows, n=1024) + GRPO.format(rows=rows, n=4096, b=16, launch=""),
                           tmp_path))
    assert main(["validate", str(path)]) == 0
    assert "warning" not in capsys.readouterr().out


def test_the_mtp_losss_logits_crowding_the_gpu_are_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """DeepSeek-V3's MTP module: its loss computes fp32 logits of every completion token (16 x 4096 x 129280 x 10
    bytes: 85 GB); 4 rows of 2048 fit an 80 GB GPU, not a 40 GB one; without the MTP loss nothing to warn about."""
    ckpt, rows = checkpoint(tmp_path, 163840, 129280), tmp_path / "rows.jsonl"
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model_type": "deepseek_v3",
                                                  "num_nextn_predict_layers": 1}))
    assert logits_gb(16, 4096, 129280, mtp_depth=1) == pytest.approx(
        logits_gb(16, 4096, 129280) + 16 * 4096 * 129280 * MTP_BYTES_PER_LOGIT / 1e9)
    path = tmp_path / "r.yaml"

    def validate(batch: int, tokens: int = 4096, launch: str = "", grpo_extra: str = "") -> str:
        grpo = GRPO.format(rows=rows, n=tokens, b=batch, launch=launch + grpo_extra)
        path.write_text(recipe(ckpt, SFT.format(rows=rows, n=1024) + grpo, tmp_path))
        assert main(["validate", str(path)]) == 0
        return capsys.readouterr().out

    out = validate(16)
    assert "warning: stages[1]: one micro-batch's logits take about 85 GB (the MTP loss: 1 depth(s) x 16 rows" in out
    assert "lower trl.per_device_train_batch_size" in out
    assert "warning" not in validate(4, 2048)
    assert "about 11 GB" in validate(4, 2048, ", launch: {gpu_memory_gb: 40}")  # more than a quarter of 40 GB
    assert "warning" not in validate(16, grpo_extra=", mtp: {weight: 0}")


VLLM_GRPO = ("  - {{name: grpo, kind: grpo, data: {rows}, rewards: [{{name: math}}], rollout: {{backend: {backend}}},\n"
             "     trl: {{max_completion_length: 64, per_device_train_batch_size: 4, num_generations: 4}}}}\n")


def test_a_model_vllm_cannot_build_named_for_vllm_is_a_warning(tmp_path: Path) -> None:
    """The tiny model's MLA sizes (16, 16, 32) are none vLLM 0.31 takes: an explicit `backend: vllm` warns (where it
    generates: GRPO's rollouts, an eval); `auto` does not (it falls back to transformers); V3's sizes pass."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "p", "solution": "1"}\n')

    def notes(tiny: str, backend: str) -> list[str]:
        engine = "vllm" if backend == "vllm" else "hf"
        text = (f"model: {{tiny: {tiny}}}\ntokenizer: {{train: {{corpus: data_pipelines.tasks.arithmetic:corpus}}}}\n"
                "stages:\n" + VLLM_GRPO.format(rows=rows, backend=backend)
                + EVAL.format(model="grpo", rows=rows, n=8, generation=f", generation: {{backend: {engine}}}"))
        found: list[str] = []
        parse_recipe(text, kinds=KINDS, notes=found)
        return [n for n in found if "vLLM" in n]

    warned = notes("{}", "vllm")
    assert [n.split(":")[1].strip() for n in warned] == ["stages[0].rollout.backend", "stages[1].generation.backend"]
    assert "the tiny model cannot run in vLLM 0.31: (qk_nope_head_dim, qk_rope_head_dim, v_head_dim) = (16, 16, 32)" \
        in warned[0]
    assert notes("{}", "auto") == []
    v3 = "{kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128}"
    assert notes(v3, "vllm") == []
    assert TINY_DEFAULTS["qk_nope_head_dim"] == 16  # the sizes the first case is about


def test_an_unreachable_config_is_a_note(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "p", "completion": "c"}\n')
    notes: list[str] = []
    parse_recipe(recipe("org/not-here", SFT.format(rows=rows, n=10**6), tmp_path), kinds=KINDS, hub=True,
                 notes=notes)  # the test session is offline (HF_HUB_OFFLINE)
    assert any("lengths not checked against the context of org/not-here" in n for n in notes)
