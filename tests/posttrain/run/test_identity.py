"""A stage's identity (its config hash) must not change when posttrain's code is reorganised or learns new options:
a changed hash silently retrains a finished stage, a lost option silently skips one.

`data/identity_dumps.json` holds the identity dumps of every stage of every shipped recipe (and variants that set
each option added after stages were written), as the code of December 2026 wrote them; `data/run_written_before_
identity_fields/` is a run folder that code wrote (the base model left out: the run rebuilds it from the recipe).
"""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from posttrain.core.identity import role
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


# --------------------------------------------------------------------------------------------------
# Every option's role, listed: a new option is one line in data/identity_roles.txt


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _roles(model: type[BaseModel], prefix: str, seen: tuple[type, ...] = ()) -> dict[str, str]:
    out = {}
    for name, field in model.model_fields.items():
        out[f"{prefix}.{name}"] = role(model, name)
        for nested in _models_in(field.annotation):
            if nested not in seen:
                out.update(_roles(nested, f"{prefix}.{name}", (*seen, model)))
    return out


def current_roles() -> dict[str, str]:
    builtin = [k for k in KINDS.names() if KINDS.get(k).module.__name__.startswith("posttrain.stages.")]
    out: dict[str, str] = {}
    for kind in builtin:
        out.update(_roles(KINDS.config(kind), kind))
    return out


def test_every_option_of_every_stage_kind_has_its_listed_role() -> None:
    """A new option without `ADDED` (or `PLACEMENT`) would change the hash of every finished stage of its kind: the
    list fails on an option it does not know, naming the line to add, and on a role that changed."""
    listed = dict(line.split(": ") for line in (DATA / "identity_roles.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    found = current_roles()
    new = {path: r for path, r in found.items() if path not in listed}
    assert not [p for p, r in new.items() if r == "counts"], (
        "new options that would change every finished stage's hash: mark them ADDED (or PLACEMENT) in their "
        f"config: {sorted(p for p, r in new.items() if r == 'counts')}")
    assert not new, "add these lines to tests/posttrain/run/data/identity_roles.txt:\n" + "\n".join(
        f"{p}: {r}" for p, r in sorted(new.items()))
    changed = {p: (listed[p], r) for p, r in found.items() if p in listed and listed[p] != r}
    assert not changed, f"options whose role changed (listed, now): {changed}"
    assert not set(listed) - set(found), f"listed options that are gone: {sorted(set(listed) - set(found))}"


def test_the_role_list_fails_on_an_unmarked_new_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from posttrain.stages import grpo

    class Config(grpo.Config):
        brand_new: int = 3

    monkeypatch.setattr(grpo, "Config", Config)
    with pytest.raises(AssertionError, match=r"mark them ADDED .*grpo\.brand_new"):
        test_every_option_of_every_stage_kind_has_its_listed_role()
