"""docs/recipe-reference.md is generated from the schema and must be current."""

from __future__ import annotations

from pathlib import Path

from posttrain.recipe.reference import render
from posttrain.stages import KINDS

PAGE = Path(__file__).resolve().parents[3] / "docs" / "recipe-reference.md"


def test_the_recipe_reference_is_current() -> None:
    assert PAGE.read_text() == render(KINDS), "the schema changed: run `make docs` and commit docs/recipe-reference.md"


def test_the_reference_documents_every_kind_key_and_role() -> None:
    page = render(KINDS)
    for kind in ("distill", "sft", "reward_model", "grpo", "dpo", "eval", "pass_rate_filter"):
        assert f"## Stage kind `{kind}`" in page
    assert "| `max_reward_error_rate` | float | `0.5` | added |" in page
    assert "| `server_port` | int | `8001` | placement |" in page
    assert "| `keep` | PassRateBounds | (its defaults) | selection |" in page
    assert "counting" not in page  # a plugin's kind (the tests register one) documents itself
