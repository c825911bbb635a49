"""`posttrain validate` finds what would otherwise fail only when the run reaches it (issue #17)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posttrain.core.errors import RecipeError
from posttrain.recipe import load_recipe, parse_recipe
from posttrain.stages import KINDS
from tests.mini_recipes import counting_pair

BASE = counting_pair(seed=0)
GRPO = """\
  - name: rl
    kind: grpo
    data: first
    rewards:
      - name: math
"""


def problems_of(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(textwrap.dedent(text), source="r.yaml", kinds=KINDS, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def test_duplicate_keys_at_any_depth_name_both_lines() -> None:
    text = BASE.replace("      learning_rate: 1.0e-4\n", "      learning_rate: 1.0e-4\n    trl:\n      max_steps: 3\n")
    text = text.replace("seed: 0\n", "seed: 0\nseed: 1\n")
    problems = problems_of(text)
    assert "r.yaml:3: seed: key 'seed' is given twice (lines 2 and 3)" in problems[0]
    assert any("stages[1].trl: key 'trl' is given twice (lines 15 and 17)" in p for p in problems), problems
    deep = BASE.replace("rows: 3", "rows: 3\n    launch: {num_processes: 1, num_processes: 2}")
    (problem,) = problems_of(deep)
    assert "stages[0].launch.num_processes: key 'num_processes' is given twice (lines 11 and 11)" in problem


def test_unknown_tiny_options_are_errors() -> None:
    problems = problems_of(BASE.replace("{hidden_size: 64}", "{hiden_size: 64, vocab_size: 99}"))
    assert len(problems) == 2
    assert "r.yaml:4: model.tiny.hiden_size: unknown DeepseekV3Config option (did you mean 'hidden_size'?)" \
        in problems[0]
    assert "model.tiny.vocab_size: set by posttrain from the tokenizer" in problems[1]


def test_references_to_stages_that_do_not_exist_or_run_later() -> None:
    (problem,) = problems_of(BASE.replace("data: first", "data: frist"))
    assert "r.yaml:13: stages[1].data: no stage, file or hub name 'frist' (did you mean 'first'?)" in problem
    (problem,) = problems_of(BASE.replace("    rows: 3\n", "    rows: 3\n    data: first\n"))
    assert "stages[0].data: refers to stage 'first', which does not run before this one" in problem


def test_missing_local_files(tmp_path: Path) -> None:
    (problem,) = problems_of(BASE.replace("data: first", f"data: {tmp_path}/rows.jsonl"))
    assert f"stages[1].data: file not found: {tmp_path}/rows.jsonl" in problem
    (problem,) = problems_of(BASE.replace("rows: 3", "rows: 3\n    launch: {config_file: ./nope/zero2.yaml}"),
                             base_dir=tmp_path)
    assert f"stages[0].launch.config_file: file not found: {tmp_path}/nope/zero2.yaml" in problem


def test_rewards_and_plugins_must_import_and_be_callable() -> None:
    text = BASE.replace('corpus: "data_pipelines.tasks.arithmetic:corpus"',
                        'corpus: "data_pipelines.tasks.arithmetic:corpse"')
    (problem,) = problems_of(text)
    assert "tokenizer.train.corpus: module 'data_pipelines.tasks.arithmetic' has no attribute 'corpse'" in problem

    grpo = BASE + GRPO.replace("      - name: math\n", "      - name: maths\n      - name: no_such_module_xyz:score\n"
                                "      - name: os:sep\n      - name: reward_model\n        kwargs: {model: later}\n")
    problems = problems_of(grpo + "  - name: later\n    kind: counting\n")
    joined = "\n".join(problems)
    assert len(problems) == 4, joined
    assert "stages[2].rewards[0].name: unknown reward 'maths'" in joined
    assert "stages[2].rewards[1].name: cannot import module 'no_such_module_xyz'" in joined
    assert "stages[2].rewards[2].name: reward 'os:sep' is a str, not a function or class" in joined
    assert "stages[2].rewards[3].kwargs.model: refers to stage 'later', which does not run before this one" in joined


def test_value_sanity() -> None:
    text = BASE.replace("learning_rate: 1.0e-4",
                        "learning_rate: -1.0e-4\n      max_steps: 0\n      num_train_epochs: 2")
    problems = problems_of(text)
    assert len(problems) == 2
    assert "stages[1].trl.learning_rate: expected a number > 0, got -0.0001" in problems[0]
    assert "stages[1].trl.max_steps: expected a number of steps > 0 (or -1: use num_train_epochs), got 0" in problems[1]
    (problem,) = problems_of(BASE + GRPO + "    trl: {temperature: -0.5}\n")
    assert "stages[2].trl.temperature: expected a number >= 0, got -0.5" in problem


def test_reserved_suffixes_are_not_stage_names() -> None:
    for name in ("first.prev", "first.tmp", "first.unfinished"):
        problems = problems_of(BASE.replace("name: second", f"name: {name}"))
        assert any(f"stages[1].name: {name!r}: names ending in .prev" in p for p in problems), problems
    assert any("'report.json' is reserved" in p for p in problems_of(BASE.replace("name: second", "name: report.json")))


def test_paths_are_relative_to_the_recipes_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "rows.jsonl").write_text('{"prompt": "p"}\n')
    (folder / "r.yaml").write_text(BASE.replace("data: first", "data: data/rows.jsonl"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(Path("../recipes/r.yaml"), kinds=KINDS)
    assert recipe.stage("second").data == str(folder / "data" / "rows.jsonl")  # type: ignore[attr-defined]
    assert recipe.output_dir == "runs/x"  # output_dir stays relative to the working directory
    # A --set value is a command-line value: relative to the working directory.
    (elsewhere / "mine.jsonl").write_text('{"prompt": "p"}\n')
    recipe = load_recipe(folder / "r.yaml", ["stages.second.data=mine.jsonl"], kinds=KINDS)
    assert recipe.stage("second").data == str(elsewhere / "mine.jsonl")  # type: ignore[attr-defined]
    # A stage name is never taken for a path, even with a folder of that name next to the recipe.
    (folder / "first").mkdir()
    (folder / "r.yaml").write_text(BASE)
    assert load_recipe(folder / "r.yaml", kinds=KINDS).stage("second").data == "first"  # type: ignore[attr-defined]


def test_hub_names_are_checked_only_when_the_hub_is_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from posttrain.recipe import check as recipe_check

    text = BASE.replace("data: first", "data: someorg/some-set")
    notes: list[str] = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parse_recipe(text, kinds=KINDS, hub=True, notes=notes)
    assert notes == ["hub names not checked (HF_HUB_OFFLINE is set): someorg/some-set"]

    monkeypatch.setattr(recipe_check, "hub_unreachable", lambda: None)
    monkeypatch.setattr(recipe_check, "hub_repo_exists", lambda name, kind: kind == "model")
    (problem,) = problems_of(text, hub=True)
    assert "stages[1].data: no stage, local file or hub dataset named 'someorg/some-set'" in problem


def test_cli_validate_reports_every_problem_and_the_offline_note(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(BASE.replace("data: first", "data: someorg/some-set").replace("rows: 3", "rows: 3\n    rows: 4"))
    proc = _validate(path)
    assert proc.returncode == 2 and "key 'rows' is given twice (lines 10 and 11)" in proc.stderr, proc.stderr
    path.write_text(BASE.replace("data: first", "data: someorg/some-set"))
    proc = _validate(path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    assert "hub names not checked (HF_HUB_OFFLINE is set): someorg/some-set" in proc.stdout


def _validate(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    code = ("import sys; from posttrain.stages import register_stage_kind; "
            "register_stage_kind('counting', 'tests.posttrain.plugins.counting_stage'); "
            "from posttrain.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "validate", str(path)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


TOOL_EVAL = """\
  - name: ev
    kind: eval
    data: first
    tools: [{name: python}]
"""


def test_tools_need_a_template_that_calls_them_and_a_sandbox_language(tmp_path: Path, family_base: object) -> None:
    # The recipe trains its tokenizer: it needs the tool-call tokens.
    (problem,) = problems_of(BASE + TOOL_EVAL)
    assert "stages[2].tools: the model's chat template (base) cannot run tools: the tokenizer the recipe trains " \
           "has no tool-call tokens: set tokenizer.train.tool_calls: true" in problem
    with_tokens = BASE.replace('corpus: "data_pipelines.tasks.arithmetic:corpus"',
                               'corpus: "data_pipelines.tasks.arithmetic:corpus", tool_calls: true')
    parse_recipe(with_tokens + TOOL_EVAL, kinds=KINDS)
    (problem,) = problems_of(with_tokens + TOOL_EVAL.replace("{name: python}", "{name: cobol}"))
    assert "stages[2].tools[0].name: no sandbox language 'cobol'" in problem
    # A model folder whose template drops tool calls (a plain chat template) is refused for tools, saying why.
    model = family_base("qwen2")  # type: ignore[operator]
    text = f"model: {{name_or_path: {model}}}\nstages:\n" + TOOL_EVAL.replace("data: first", "data: x.jsonl")
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, kinds=KINDS, base_dir=tmp_path)
    assert "stages[0].tools: the model's chat template" in str(info.value)
    assert "cannot render a tool call" in str(info.value)
