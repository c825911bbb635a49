"""A stage's identity (its config hash) must not change when posttrain's code is reorganised or learns new options:
a changed hash silently retrains a finished stage, a lost option silently skips one.

`data/identity_dumps.json` holds the identity dumps of every stage of every shipped recipe (and variants that set
each option added after stages were written), as the code of December 2026 wrote them; `data/run_written_before_
identity_fields/` is a run folder that code wrote (the base model left out: the run rebuilds it from the recipe).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrain.recipe import IDENTITY, load_recipe
from posttrain.stages import KINDS

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[3]
#: Paths in the dumps are absolute (a recipe's relative paths are resolved against its folder): `{ROOT}` stands for
#: the checkout.
GOLDEN = json.loads((DATA / "identity_dumps.json").read_text().replace("{ROOT}", str(ROOT)))


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_identity_dumps_are_those_finished_stages_were_hashed_with(case: str) -> None:
    golden = GOLDEN[case]
    recipe = load_recipe(ROOT / "recipes" / case.split()[0], golden["sets"], quick=golden["quick"], kinds=KINDS,
                         check=False)
    dumps = {s.name: s.model_dump(mode="json", context={IDENTITY: True}) for s in recipe.stages}
    assert dumps == golden["stages"]


@pytest.mark.slow
def test_a_run_folder_written_by_earlier_code_is_skipped(tmp_path: Path) -> None:
    from posttrain.run.runner import run_recipe

    out = tmp_path / "run"
    shutil.copytree(DATA / "run_written_before_identity_fields", out, ignore=shutil.ignore_patterns("*.in"))
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text((DATA / "run_written_before_identity_fields" / "recipe.yaml.in").read_text()
                           .replace("RUN_DIR", str(out)))
    before = {name: (out / name / "stage.json").read_text() for name in ("distill", "eval")}
    report = run_recipe(load_recipe(recipe_path, kinds=KINDS))
    assert {name: entry["status"] for name, entry in report["stages"].items()} == {"distill": "skipped",
                                                                                  "eval": "skipped"}
    assert {name: (out / name / "stage.json").read_text() for name in before} == before
