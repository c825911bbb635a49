"""DeepSeek-V3's distillation recipe in the distill stage: a verifying system prompt the SFT rows never see, both
sample types per prompt, domain experts, non-reasoning rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.core.errors import RecipeError
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS

PLUGINS = "tests.data_pipelines.plugins"
RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: distill
    kind: distill
    source: {source}
    teacher:
{teachers}
    n: 2
    rewards:
      - name: math
        kwargs: {{workers: 0}}
      - name: format
        kwargs: {{strict: true}}
    decontamination: null
{extra}"""
ARITHMETIC = "{function: data_pipelines.tasks.arithmetic:train_prompts, kwargs: {n: 20}, keep: [solution]}"
DOMAINS = f"{{function: '{PLUGINS}:domain_prompts', kwargs: {{n: 12}}}}"
R1 = (f"      - {{backend: scripted, model: '{PLUGINS}:verifying_teacher', name: r1,"
      " options: {slip: 0.0, malformed: 0.0},"
      " system_prompt: 'Reflect on your steps and verify the answer before you give it.'")
ORIGINAL = f"      - {{backend: scripted, model: '{PLUGINS}:direct_teacher', name: original, reasoning: false"


def run(tmp_path: Path, base: Path, source: str, teachers: list[str], extra: str = "") -> dict[str, Any]:
    text = RECIPE.format(out=tmp_path, base=base, source=source, teachers="\n".join(t + "}" for t in teachers),
                         extra=extra)
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert report["stages"]["distill"]["status"] == "done", report
    d = tmp_path / "distill"
    return {"data": [json.loads(line) for line in (d / "data.jsonl").read_text().splitlines()],
            "stats": json.loads((d / "stats.json").read_text())}


def test_the_system_prompt_reaches_the_teacher_not_the_rows_and_both_sample_types_are_kept(
    tmp_path: Path, tiny_base: Path
) -> None:
    out = run(tmp_path, tiny_base, ARITHMETIC, [R1, ORIGINAL], extra="    keep_per_teacher: true\n")
    data, stats = out["data"], out["stats"]
    by_prompt: dict[str, dict[str, dict]] = {}
    for r in data:
        by_prompt.setdefault(r["prompt_id"], {})[r["teacher"]] = r
    assert len(by_prompt) == 20 and all(set(rows) == {"r1", "original"} for rows in by_prompt.values())
    for rows in by_prompt.values():
        r1, original = rows["r1"], rows["original"]
        # <system prompt, problem, R1 response>: the response verifies, the stored prompt is the problem alone.
        assert r1["prompt"].startswith("Compute ") and "verify" not in json.dumps(r1)
        assert "; check: " in r1["completion"] and r1["completion"].startswith("<think>")
        # <problem, original response>: no <think> block, marked non-reasoning, not judged by the layout reward.
        assert original["prompt"] == r1["prompt"] and "<think>" not in original["completion"]
        assert original["reasoning"] is False and original["scores"] == {"math": 1.0}
        assert "reasoning" not in r1 and r1["scores"] == {"math": 1.0, "format": 1.0}
    per = stats["per_teacher"]
    assert per["r1"]["prompts"] == per["original"]["prompts"] == 20
    assert per["r1"]["kept"] == per["original"]["kept"] == 20 and per["original"]["acceptance_rate"] == 0.5
    assert per["original"]["rejected"] == {"keep_per_prompt": 20}  # its two samples are identical: one is kept
    assert stats["kept"] == 40


def test_without_keep_per_teacher_a_prompt_keeps_one_sample(tmp_path: Path, tiny_base: Path) -> None:
    out = run(tmp_path, tiny_base, ARITHMETIC, [R1, ORIGINAL])
    assert len(out["data"]) == 20 and out["stats"]["kept"] == 20


def test_domain_experts_take_their_own_prompts_and_rows_say_who_wrote_them(tmp_path: Path, tiny_base: Path) -> None:
    teachers = [R1 + ", domain: large", ORIGINAL + ", domain: [small]"]
    out = run(tmp_path, tiny_base, DOMAINS, teachers)
    data, stats = out["data"], out["stats"]
    assert len(data) == 12
    assert all(r["teacher"] == ("r1" if r["domain"] == "large" else "original") for r in data)
    assert stats["per_teacher"]["r1"]["prompts"] == stats["per_teacher"]["original"]["prompts"] == 6
    assert stats["per_teacher"]["r1"]["generated"] == 12 and stats["prompts_without_teacher"] == 0

    # A predicate instead of a domain; prompts no teacher takes are counted, not generated for.
    out = run(tmp_path / "select", tiny_base, DOMAINS, [R1 + f", select: '{PLUGINS}:is_small'"])
    assert {r["domain"] for r in out["data"]} == {"small"} and out["stats"]["prompts_without_teacher"] == 6
    assert out["stats"]["generated"] == 12


def test_rows_marked_non_reasoning_pass_without_a_think_block(tmp_path: Path, tiny_base: Path) -> None:
    # A teacher that never thinks: only the rows marked `reasoning: false` (every fourth) may keep its answers.
    out = run(tmp_path, tiny_base, DOMAINS, [f"      - {{backend: scripted, model: '{PLUGINS}:direct_teacher'"])
    assert sorted(r["id"].split("-")[0] for r in out["data"]) == ["d0", "d4", "d8"]
    assert all(r["reasoning"] is False and r["scores"] == {"math": 1.0} for r in out["data"])
    assert out["stats"]["rejected"]["reward_format"] == 18  # the reasoning rows: 9 prompts x 2 samples


def test_teacher_options_are_checked(tmp_path: Path, tiny_base: Path) -> None:
    with pytest.raises(RecipeError, match="reasoning"):
        parse_recipe(RECIPE.format(out=tmp_path, base=tiny_base, source=ARITHMETIC, extra="",
                                   teachers=ORIGINAL.replace("reasoning: false", "reasoning: sometimes") + "}"),
                     kinds=KINDS)
