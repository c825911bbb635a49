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

GOOD = counting_pair(seed=3)


def problems_of(text: str, *overrides: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(textwrap.dedent(text), source="r.yaml", overrides=overrides, kinds=KINDS)
    return info.value.problems


def test_good_recipe_is_typed() -> None:
    recipe = parse_recipe(GOOD, source="r.yaml", kinds=KINDS)
    assert recipe.seed == 3
    assert recipe.model.tiny == {"hidden_size": 64}
    second = recipe.stage("second")
    assert type(second).__name__ == "Config" and second.data == "first"  # type: ignore[attr-defined]
    assert second.trl == {"learning_rate": 1e-4}
    # The resolved recipe round-trips, stage-specific fields included.
    again = parse_recipe(recipe.to_yaml(), kinds=KINDS)
    assert again.model_dump() == recipe.model_dump()


def test_missing_kind_names_stage_and_line() -> None:
    text = GOOD.replace("    kind: counting\n    rows: 3\n", "    rows: 3\n")
    (problem,) = problems_of(text)
    assert problem.startswith("r.yaml:8: stages[0]: missing 'kind'")


def test_unknown_kind_is_never_guessed() -> None:
    (problem,) = problems_of(GOOD.replace("kind: counting\n    rows", "kind: countin\n    rows"))
    assert "stages[0].kind: unknown stage kind 'countin'" in problem
    assert "did you mean 'counting'" in problem


def test_wrong_type_in_trl_options() -> None:
    (problem,) = problems_of(GOOD.replace("learning_rate: 1.0e-4", "learning_rate: fast"))
    assert problem == "r.yaml:15: stages[1].trl.learning_rate: expected a number, got 'fast'"


def test_unknown_keys_everywhere_are_all_reported() -> None:
    text = GOOD.replace("rows: 3", "rowz: 3").replace("learning_rate: 1.0e-4", "learning_rat: 1.0e-4")
    text = text.replace("seed: 3", "seed: 3\nsed: 4")
    problems = problems_of(text)
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert "r.yaml:3: sed: unknown key" in joined
    assert "stages[0].rowz: unknown key (did you mean 'rows'?)" in joined
    assert "stages[1].trl.learning_rat: unknown option for SFTConfig (did you mean 'learning_rate'?)" in joined


def test_wrong_type_in_stage_option() -> None:
    (problem,) = problems_of(GOOD.replace("rows: 3", "rows: many"))
    assert problem == "r.yaml:10: stages[0].rows: expected an integer, got 'many'"


def test_broken_yaml_reports_its_line() -> None:
    (problem,) = problems_of(GOOD.replace("rows: 3", "rows: [3"))
    assert problem.startswith("r.yaml:1") and "invalid YAML" in problem


def test_model_needs_exactly_one_source() -> None:
    (problem,) = problems_of(GOOD.replace("  tiny: {hidden_size: 64}", "  tiny: {}\n  name_or_path: gpt2"))
    assert "model: give exactly one of" in problem


def test_reference_to_a_later_stage_is_an_error() -> None:
    text = GOOD.replace("    rows: 3\n", "    rows: 3\n    data: second\n")
    (problem,) = problems_of(text)
    assert "stages[0].data: refers to stage 'second', which does not run before this one" in problem


def test_duplicate_and_reserved_names() -> None:
    problems = problems_of(GOOD.replace("name: second", "name: first"))
    assert any("duplicate stage name 'first'" in p for p in problems)
    problems = problems_of(GOOD.replace("name: second", "name: plots"))
    assert any("'plots' is reserved" in p for p in problems)


def test_output_dir_is_set_by_posttrain() -> None:
    (problem,) = problems_of(GOOD.replace("learning_rate: 1.0e-4", "output_dir: elsewhere"))
    assert "stages[1].trl.output_dir: set by posttrain" in problem


def test_trl_rejects_inconsistent_options() -> None:
    (problem,) = problems_of(GOOD.replace("learning_rate: 1.0e-4", "bf16: true\n      fp16: true"))
    assert "stages[1].trl: SFTConfig rejected these options" in problem


def test_set_addresses_stages_by_name_and_other_keys_by_path() -> None:
    recipe = parse_recipe(GOOD, overrides=["stages.second.trl.learning_rate=3e-5", "seed=1",
                                           "stages.first.rows=7"], kinds=KINDS)
    assert recipe.seed == 1
    assert recipe.stage("second").trl["learning_rate"] == 3e-5
    assert recipe.stage("first").rows == 7  # type: ignore[attr-defined]


def test_set_errors() -> None:
    assert "no stage named 'sfx'" in problems_of(GOOD, "stages.sfx.rows=1")[0]
    assert "expected KEY=VALUE" in problems_of(GOOD, "seed")[0]
    assert "stages[0].rows: expected an integer, got 'x'" in problems_of(GOOD, "stages.first.rows=x")[0]


def test_quick_applies_the_recipes_own_overrides_before_set() -> None:
    text = GOOD + "quick:\n  seed: 5\n  stages.first.rows: 1\n  stages.second.trl.learning_rate: 1.0e-3\n"
    assert parse_recipe(text, kinds=KINDS).stage("first").rows == 3  # type: ignore[attr-defined]
    quick = parse_recipe(text, quick=True, overrides=["stages.second.trl.learning_rate=2e-3"], kinds=KINDS)
    assert (quick.seed, quick.stage("first").rows) == (5, 1)  # type: ignore[attr-defined]
    assert quick.stage("second").trl["learning_rate"] == 2e-3  # --set wins
    with pytest.raises(RecipeError) as err:
        parse_recipe(GOOD, quick=True, kinds=KINDS)
    assert "has no `quick:` mapping" in err.value.problems[0]
    with pytest.raises(RecipeError) as err:
        parse_recipe(GOOD + "quick:\n  stages.sfx.rows: 1\n", quick=True, kinds=KINDS)
    assert "quick stages.sfx.rows: no stage named 'sfx'" in err.value.problems[0]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("kind: counting\n    rows: 3", "rows: 3"), "stages[0]: missing 'kind'"),
        (("learning_rate: 1.0e-4", "learning_rate: fast"),
         "stages[1].trl.learning_rate: expected a number, got 'fast'"),
        (("rows: 3", "rowz: 3"), "stages[0].rowz: unknown key"),
        (("rows: 3", "rows: [3"), "invalid YAML"),
    ],
)
def test_cli_validate_exit_2_without_traceback(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(GOOD.replace(*edit))
    proc = _validate(path)
    assert proc.returncode == 2
    assert expected in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_validate_ok(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    proc = _validate(path)
    assert proc.returncode == 0, proc.stderr
    assert "ok (2 stages: first, second)" in proc.stdout


def test_shipped_recipes_validate() -> None:
    for path in sorted(Path("recipes").glob("*.yaml")):
        load_recipe(path, kinds=KINDS)


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys; from posttrain.stages import register_stage_kind; "
            "register_stage_kind('counting', 'tests.posttrain.plugins.counting_stage'); "
            "from posttrain.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "validate", str(path)], capture_output=True, text=True)
