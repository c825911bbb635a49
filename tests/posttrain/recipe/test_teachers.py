"""`posttrain validate` refuses a distillation teacher whose vocabulary is not its student's, naming both
(posttrain/recipe/teachers.py, posttrain/core/vocab.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from posttrain.core.errors import RecipeError
from posttrain.core.vocab import Vocab, read_vocab, vocab_mismatch
from posttrain.recipe import parse_recipe
from posttrain.stages import KINDS

OPD = """\
output_dir: runs/x
seed: 0
model: {model}
{tokenizer}stages:
{earlier}  - name: opd
    kind: on_policy_distill
    data: {data}
    teacher: {teacher}
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> dict[str, Path]:
    """Model folders as validation reads them (tokenizer files and config.json): the tiny base's, one whose tokenizer
    was trained on words, and one with the base's tokenizer but 64 more output rows (padded embeddings)."""
    from posttrain.core.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("teachers")
    other = root / "other"
    train_tokenizer(["the teacher scores every token of the student's answer"] * 50, 512).save_pretrained(other)
    config = json.loads((tiny_base / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config))
    padded = root / "padded"
    shutil.copytree(tiny_base, padded)
    (padded / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 64}))
    (root / "prompts.jsonl").write_text('{"prompt": "Compute 1+2."}\n')
    return {"base": tiny_base, "other": other, "padded": padded, "data": root / "prompts.jsonl"}


def opd(folders: dict[str, Path], teacher: str, model: str | None = None, tokenizer: str = "",
        earlier: str = "") -> str:
    return OPD.format(model=model or f"{{name_or_path: {folders['base']}}}", tokenizer=tokenizer, earlier=earlier,
                      data=folders["data"], teacher=teacher)


def problems_of(text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, source="r.yaml", kinds=KINDS)
    return info.value.problems


def test_a_teacher_with_another_tokenizer_is_refused_naming_both(folders: dict[str, Path]) -> None:
    (problem,) = problems_of(opd(folders, str(folders["other"])))
    assert problem.startswith("r.yaml:8: stages[0].teacher: the teacher's tokenizer differs from the student's: ")
    assert f"teacher {folders['other']} (" in problem
    assert f"student the recipe's base model {folders['base']} (297 tokens, an output layer of 297 rows)" in problem
    assert "cross-tokenizer distillation is not supported yet" in problem


def test_the_same_tokenizer_with_a_padded_output_layer_is_refused(folders: dict[str, Path]) -> None:
    (problem,) = problems_of(opd(folders, str(folders["padded"])))
    assert "the teacher's output layer has 361 rows and the student's 297" in problem
    assert str(folders["padded"]) in problem and str(folders["base"]) in problem


def test_a_teacher_with_the_students_vocabulary_passes(folders: dict[str, Path]) -> None:
    notes: list[str] = []
    copy = folders["data"].parent / "copy"
    if not copy.exists():
        shutil.copytree(folders["base"], copy)
    recipe = parse_recipe(opd(folders, str(copy)), kinds=KINDS, notes=notes)
    assert recipe.stage("opd").teacher == str(copy) and notes == []


def test_a_tiny_student_built_on_the_teachers_tokenizer_passes_and_one_trained_by_the_recipe_is_noted(
        folders: dict[str, Path]) -> None:
    """The tiny reproduction's set-up: the student is built from `model.tiny` with the teacher's tokenizer."""
    tokenizer = f"tokenizer: {{name_or_path: {folders['base']}}}\n"
    notes: list[str] = []
    parse_recipe(opd(folders, str(folders["base"]), model="{tiny: {num_hidden_layers: 2}}", tokenizer=tokenizer),
                 kinds=KINDS, notes=notes)
    assert notes == []
    (problem,) = problems_of(opd(folders, str(folders["other"]), model="{tiny: {}}", tokenizer=tokenizer))
    assert "the recipe's tiny base model (tokenizer " in problem
    trained = "tokenizer: {train: {corpus: 'data_pipelines.tasks.arithmetic:corpus'}}\n"
    parse_recipe(opd(folders, str(folders["other"]), model="{tiny: {}}", tokenizer=trained), kinds=KINDS, notes=notes)
    assert notes == ["stages[0].teacher: not checked that the teacher shares the student's tokenizer (the recipe's "
                     "tiny base model (tokenizer trained by the recipe) cannot be read before the run); the stage "
                     "checks it before training"]


def test_a_teacher_trained_in_the_recipe_shares_the_base_tokenizer_without_reading_it(folders: dict[str, Path]) -> None:
    earlier = f"""\
  - name: sft
    kind: sft
    data: {folders['data']}
"""
    notes: list[str] = []
    trained = "tokenizer: {train: {corpus: 'data_pipelines.tasks.arithmetic:corpus'}}\n"
    parse_recipe(opd(folders, "sft", model="{tiny: {}}", tokenizer=trained, earlier=earlier), kinds=KINDS,
                 notes=notes)
    assert notes == []


def test_grpos_distillation_teacher_is_checked_too(folders: dict[str, Path]) -> None:
    text = textwrap.dedent(f"""\
        output_dir: runs/x
        model: {{name_or_path: {folders['base']}}}
        stages:
          - name: rl
            kind: grpo
            data: {folders['data']}
            rewards: [{{name: math}}]
            distillation: {{teacher: {folders['other']}, weight: 0.2}}
        """)
    (problem,) = problems_of(text)
    assert problem.startswith("r.yaml:8: stages[0].distillation.teacher: the teacher's tokenizer differs")


def test_a_hub_teacher_offline_is_noted_not_refused(folders: dict[str, Path]) -> None:
    notes: list[str] = []
    parse_recipe(opd(folders, "someone/teacher-7b"), kinds=KINDS, notes=notes)  # HF_HUB_OFFLINE=1 in the tests
    assert any("someone/teacher-7b cannot be read before the run" in n for n in notes), notes


def test_validate_exits_2_naming_both(folders: dict[str, Path], tmp_path: Path, python: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(opd(folders, str(folders["other"])))
    proc = subprocess.run([python, "-m", "posttrain.cli", "validate", str(path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "stages[0].teacher: the teacher's tokenizer differs from the student's" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_first_differing_token_is_named() -> None:
    student = Vocab("student", {"a": 0, "b": 1, "c": 2}, 3)
    assert vocab_mismatch(student, Vocab("teacher", {"a": 0, "b": 1, "c": 2}, 3)) is None
    assert vocab_mismatch(student, Vocab("teacher", {"a": 0, "b": 1, "c": 2}, None)) is None  # rows unknown
    swapped = vocab_mismatch(student, Vocab("teacher", {"a": 0, "c": 1, "b": 2}, 3))
    assert swapped is not None and "e.g. token 1 is 'c' for the teacher and 'b' for the student" in swapped
    extra = vocab_mismatch(student, Vocab("teacher", {"a": 0, "b": 1, "c": 2, "d": 3}, 4))
    assert extra is not None and "e.g. token 3 is 'd' for the teacher and absent for the student" in extra


def test_read_vocab_reads_a_folder_and_says_none_for_what_it_cannot(folders: dict[str, Path], tmp_path: Path) -> None:
    vocab = read_vocab(str(folders["base"]))
    assert vocab is not None and len(vocab.tokens) == 297 and vocab.rows == 297
    assert read_vocab(str(tmp_path)) is None  # no tokenizer there
    assert read_vocab("someone/model", hub=True) is None  # the hub is out of reach in the tests
