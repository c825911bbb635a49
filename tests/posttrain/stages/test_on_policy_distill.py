"""The `on_policy_distill` stage end to end on tiny models: a smaller student of another shape moves towards a teacher
on its own samples, held out and in training, with MoE balancing and LoRA; a run killed mid-training resumes; a
teacher the validation could not compare is refused before the first step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from data_pipelines.tasks.arithmetic import train_prompts
from posttrain.core.models import load_causal_lm, load_tokenizer
from posttrain.core.run_folder import read_jsonl
from posttrain.recipe import parse_recipe
from posttrain.report import write_report
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.training.moe_balance import find_routers

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {student}}}
stages:
  - name: opd
    kind: on_policy_distill
    data: {data}
    teacher: {teacher}
{extra}    trl: {{max_steps: {steps}, per_device_train_batch_size: 8, max_completion_length: 16, learning_rate: 2.0e-3,
           logging_steps: 2, save_steps: {save}, lr_scheduler_type: constant}}
"""


def recipe(out: Path, student: Path, teacher: Path, data: Path, steps: int = 8, save: int = 100,
           extra: str = "") -> str:
    return RECIPE.format(out=out, student=student, teacher=teacher, data=data, steps=steps, save=save, extra=extra)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> tuple[Path, Path]:
    """(student, teacher): a 2-layer DeepSeek-V3 with 4 experts and a narrower hidden size, and the 4-layer tiny
    model with its output layer scaled up (a confident teacher, far from the student), on the same tokenizer."""
    from posttrain.core.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("opd_models")
    tokenizer = load_tokenizer(str(tiny_base))
    student = build_tiny_model(tokenizer, {"num_hidden_layers": 2, "n_routed_experts": 4, "hidden_size": 96}, seed=3)
    student.save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    teacher = load_causal_lm(str(tiny_base))
    with torch.no_grad():
        teacher.lm_head.weight.mul_(30)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return root / "student", root / "teacher"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("opd_data") / "prompts.jsonl"
    with open(path, "w") as f:
        for r in train_prompts(96, seed=1):
            f.write(json.dumps({"question": r["prompt"], "solution": r["solution"]}) + "\n")
    return path


def prose() -> list[str]:
    """A corpus of words, not sums: a tokenizer trained on it is not the teacher's."""
    return ["the student answers and the teacher scores every token of its answer"] * 50


def metric_rows(out: Path) -> list[dict]:
    return read_jsonl(out / "opd" / "metrics.jsonl")


def test_a_smaller_student_moves_towards_the_teacher_on_its_own_samples(
        tmp_path: Path, models: tuple[Path, Path], prompts: Path) -> None:
    student, teacher = models
    extra = ("    prompt_column: question\n    heldout: {data: " + str(prompts) + ", prompt_column: question, "
             "max_samples: 16}\n    moe_balance: {bias_update_speed: 0.01}\n")
    report = run_recipe(parse_recipe(recipe(tmp_path, student, teacher, prompts, steps=8, save=4, extra=extra),
                                     kinds=KINDS))
    entry = report["stages"]["opd"]
    assert entry["status"] == "done", entry
    m = entry["metrics"]
    assert m["steps"] == 8 and m["rows"] == 96 and m["teacher"] == str(teacher) and m["beta"] == 1.0
    # The student moves towards the teacher on its own samples, in training and on held-out prompts.
    assert m["train_reverse_kl_last"] < m["train_reverse_kl_first"]
    assert m["heldout_reverse_kl_last"] < m["heldout_reverse_kl_first"]
    rows = metric_rows(tmp_path)
    train = [r for r in rows if "loss" in r]
    held = [r for r in rows if "eval_opd/agreement" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert [r["step"] for r in held] == [0, 4, 8]  # at the start, every save_steps, at the end
    # With beta = 1 TRL's loss is the reverse KL per token: the exact measurement agrees with it.
    for r in train:
        assert r["opd/reverse_kl"] == pytest.approx(r["loss"], rel=1e-3)
        assert 0 <= r["opd/agreement"] <= 1
    # Student seconds are the steps' seconds less the teacher's forward passes.
    assert 0 < m["teacher_seconds"] < m["train_seconds"]
    assert m["student_seconds"] == pytest.approx(m["train_seconds"] - m["teacher_seconds"], abs=0.02)
    # MoE balancing ran on the student: MaxVio logged, router biases moved by multiples of γ.
    assert all(r["moe/max_violation"] >= 0 for r in train)
    trained = load_causal_lm(str(tmp_path / "opd" / "model"))
    assert trained.config.num_hidden_layers == 2 and trained.config.hidden_size == 96
    biases = torch.stack([r.e_score_correction_bias for _, r in find_routers(trained)])
    assert 0 < biases.abs().max() <= 0.08 + 1e-6
    md = write_report(tmp_path, kinds=KINDS).read_text()
    assert "Distilled the base model on-policy from `" in md
    assert "**student-teacher agreement, held-out prompts:" in md
    assert (tmp_path / "plots" / "opd_distillation.png").exists()


def test_lora_distillation_saves_a_merged_model(tmp_path: Path, models: tuple[Path, Path], prompts: Path) -> None:
    student, teacher = models
    text = recipe(tmp_path, student, teacher, prompts, steps=2, extra="    prompt_column: question\n"
                  "    lora: {r: 4, alpha: 8}\n")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert report["stages"]["opd"]["status"] == "done", report
    merged = load_causal_lm(str(tmp_path / "opd" / "model")).state_dict()
    start = load_causal_lm(str(student)).state_dict()
    assert not any("lora" in k for k in merged)
    changed = {k for k, v in merged.items() if not torch.equal(v, start[k])}
    assert "model.layers.0.self_attn.kv_b_proj.weight" in changed
    assert "lm_head.weight" not in changed and "model.embed_tokens.weight" not in changed
    assert (tmp_path / "opd" / "adapter" / "adapter_config.json").exists()


def test_a_teacher_validation_could_not_read_is_refused_before_the_first_step(
        tmp_path: Path, models: tuple[Path, Path], prompts: Path) -> None:
    """The recipe trains its tokenizer when it runs, so `validate` can only note the teacher; the stage compares."""
    _, teacher = models
    text = f"""\
output_dir: {tmp_path / 'out'}
seed: 0
model: {{tiny: {{hidden_size: 64}}}}
tokenizer:
  train: {{corpus: "tests.posttrain.stages.test_on_policy_distill:prose"}}
stages:
  - name: opd
    kind: on_policy_distill
    data: {prompts}
    prompt_column: question
    teacher: {teacher}
    trl: {{max_steps: 2, per_device_train_batch_size: 8, max_completion_length: 8}}
"""
    notes: list[str] = []
    recipe_ = parse_recipe(text, kinds=KINDS, notes=notes)
    assert any("stages[0].teacher: not checked that the teacher shares the student's tokenizer" in n for n in notes)
    entry = run_recipe(recipe_)["stages"]["opd"]
    assert entry["status"] == "failed", entry
    error = entry["metrics"]["error"]
    assert "the teacher's tokenizer differs from the student's" in error and str(teacher) in error
    assert "cross-tokenizer distillation is not supported" in error
    assert not (tmp_path / "out" / "opd" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_resumes_to_the_uninterrupted_model(
        tmp_path: Path, models: tuple[Path, Path], prompts: Path, python: str) -> None:
    student, teacher = models
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    for out in (killed, ref):
        (out.parent / f"{out.name}.yaml").write_text(
            recipe(out, student, teacher, prompts, steps=24, save=4, extra="    prompt_column: question\n"))
    proc = subprocess.Popen([python, "-m", "posttrain.cli", "run", str(tmp_path / "killed.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "opd" / "checkpoints" / "checkpoint-8").exists() and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (killed / "opd" / "model").exists(), "killed too late: training had finished"
    saved = json.loads((killed / "opd" / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    seconds_at_8 = saved["stateful_callbacks"]["StepClock"]["attributes"]["seconds"]
    assert seconds_at_8 > 0

    again = subprocess.run([python, "-m", "posttrain.cli", "run", str(tmp_path / "killed.yaml")],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    assert subprocess.run([python, "-m", "posttrain.cli", "run", str(tmp_path / "ref.yaml")],
                          capture_output=True, timeout=600).returncode == 0
    resumed = json.loads((killed / "report.json").read_text())["stages"]["opd"]["metrics"]
    assert resumed["steps"] == 24
    assert resumed["train_seconds"] > seconds_at_8  # the seconds before the kill are counted too
    assert [r["step"] for r in metric_rows(killed) if "loss" in r] == [r["step"] for r in metric_rows(ref)
                                                                      if "loss" in r]
    a = load_causal_lm(str(killed / "opd" / "model")).state_dict()
    b = load_causal_lm(str(ref / "opd" / "model")).state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key

