from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from data_pipelines.tasks.arithmetic import eval_prompts
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.stages.eval import pass_at_k, summarize
from tests.posttrain.conftest import BuiltReport
from tests.posttrain.report.fake_run import stage_sections

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: eval
    kind: eval
    data: {data}
    samples: 4
    pass_k: [2, 4]
    sampling: {{temperature: 1.0, max_new_tokens: 48}}
    chunk_size: 10
{extra}"""
SCRIPTED = """\
    generation:
      backend: scripted
      model: data_pipelines.tasks.arithmetic:teacher
      options: {{slip: {slip}, malformed: 0.0}}
"""


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in eval_prompts(40, seed=3)))
    return path


def recipe(out: Path, base: Path, data: Path, extra: str = "") -> str:
    return RECIPE.format(out=out, base=base, data=data, extra=extra)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 0, 1), (4, 1, 1), (4, 1, 2), (4, 3, 2), (5, 2, 3), (4, 4, 4)])
def test_pass_at_k_is_the_chance_that_k_of_the_n_samples_hold_a_correct_one(n: int, c: int, k: int) -> None:
    correct = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(correct, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_summary_separates_greedy_accuracy_from_sampled_pass_at_1() -> None:
    rows = [{"greedy_score": 1.0, "sample_scores": [1.0, 0.0, 0.0, 0.0]},
            {"greedy_score": 0.0, "sample_scores": [1.0, 1.0, 0.0, 1.0]}]
    out = summarize(rows, threshold=1.0, pass_k=[2])
    assert out["accuracy"] == 0.5
    assert out["pass@1"] == pytest.approx((0.25 + 0.75) / 2)
    assert out["pass@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["k"] == out["samples_per_prompt"] == 4


def test_a_perfect_solver_scores_one_and_a_slipping_one_less_when_sampled(
    tmp_path: Path, tiny_base: Path, held_out: Path
) -> None:
    text = recipe(tmp_path / "a", tiny_base, held_out, SCRIPTED.format(slip=0.0))
    perfect = run_recipe(parse_recipe(text, kinds=KINDS))
    metrics = perfect["stages"]["eval"]["metrics"]
    assert (metrics["accuracy"], metrics["pass@1"], metrics["pass@4"], metrics["prompts"]) == (1.0, 1.0, 1.0, 40)
    text = recipe(tmp_path / "b", tiny_base, held_out, SCRIPTED.format(slip=0.2))
    slipping = run_recipe(parse_recipe(text, kinds=KINDS))
    metrics = slipping["stages"]["eval"]["metrics"]
    assert metrics["accuracy"] == 1.0  # the scripted teacher never slips at T = 0
    assert 0.2 < metrics["pass@1"] < 0.9
    assert metrics["pass@1"] <= metrics["pass@2"] <= metrics["pass@4"]
    rows = [json.loads(line) for line in (tmp_path / "b" / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["samples"]) == 4 for r in rows)
    assert sum(sum(r["sample_scores"]) for r in rows) / 160 == pytest.approx(metrics["pass@1"], abs=1e-4)


def test_an_interrupted_eval_only_generates_the_missing_prompts(
    tmp_path: Path, tiny_base: Path, held_out: Path
) -> None:
    text = recipe(tmp_path, tiny_base, held_out, SCRIPTED.format(slip=0.0))
    # A previous run wrote 15 rows (with deliberately wrong scores) and half a row before it was killed.
    first = eval_prompts(40, seed=3)[:15]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "samples.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "prompt": r["prompt"], "greedy": "x", "greedy_score": 0.0, "samples": ["x"] * 4,
                    "sample_scores": [0.0] * 4}) + "\n" for r in first) + '{"id": "16", "prompt": "Comp')  # torn
    state = {"kind": "eval", "status": "running", "config_hash": _digest(text)}
    (tmp_path / "eval" / "stage.json").write_text(json.dumps(state))
    metrics = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["eval"]["metrics"]
    assert metrics["accuracy"] == pytest.approx(25 / 40)  # the 15 kept rows were not generated again
    lines = (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 40 and len({json.loads(x)["id"] for x in lines}) == 40


def test_the_tiny_base_model_with_transformers(tmp_path: Path, tiny_base: Path, held_out: Path) -> None:
    text = recipe(tmp_path, tiny_base, held_out).replace("chunk_size: 10", "chunk_size: 10\n    max_samples: 8")
    entry = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["eval"]
    assert entry["status"] == "done", entry
    assert entry["metrics"]["prompts"] == 8 and entry["metrics"]["model"] == str(tiny_base)
    assert 0.0 <= entry["metrics"]["pass@1"] <= 1.0
    # Response lengths are the engine's own token counts: at most max_new_tokens, whatever the text decodes to.
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    lengths = [n for r in rows for n in r["sample_lengths"]]
    assert len(lengths) == 32 and all(1 <= n <= 48 for n in lengths)
    assert entry["metrics"]["response_length"] == pytest.approx(sum(lengths) / 32, abs=0.05)
    assert entry["metrics"]["temperature"] == 1.0


def test_a_missing_prompt_column_is_a_clear_failure(tmp_path: Path, tiny_base: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"question": "Compute 1+1.", "solution": "2"}) + "\n")
    entry = run_recipe(parse_recipe(recipe(tmp_path / "out", tiny_base, data), kinds=KINDS))["stages"]["eval"]
    assert entry["status"] == "failed"
    assert "no column 'prompt'" in entry["metrics"]["error"]


def _digest(text: str) -> str:
    from posttrain.run.base_model import base_fingerprint
    from posttrain.run.runner import stage_hash

    recipe = parse_recipe(text, kinds=KINDS)
    return stage_hash(recipe, recipe.stages[0], base_fingerprint(recipe), {})


def test_report_section(full_report: BuiltReport) -> None:
    assert "**greedy accuracy: 58.4 %**" in stage_sections(full_report.md)["eval_sft"]


def test_several_temperatures_give_pass_at_1_at_each_and_their_mean(
    tmp_path: Path, tiny_base: Path, held_out: Path
) -> None:
    # The scripted teacher slips more at higher temperatures; sampling.temperature is left to the list's first.
    text = recipe(tmp_path, tiny_base, held_out, SCRIPTED.format(slip=0.4) + "    temperatures: [0.5, 2.0]\n")
    text = text.replace("temperature: 1.0, ", "")
    parsed = parse_recipe(text, kinds=KINDS)
    assert parsed.stages[0].sampling.temperature == 0.5
    m = run_recipe(parsed)["stages"]["eval"]["metrics"]
    assert m["temperature"] == 0.5 and m["temperatures"] == [0.5, 2.0]
    assert m["pass@1"] == m["pass@1/T=0.5"] > m["pass@1/T=2"]
    assert m["pass@1/mean"] == pytest.approx((m["pass@1/T=0.5"] + m["pass@1/T=2"]) / 2, abs=1e-4)
    assert m["pass@4"] >= m["pass@1"]  # pass@k is at the sampling temperature
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert all(r["temperature"] == 0.5 and set(r["by_temperature"]) == {"2"} for r in rows)
    hot = [s for r in rows for s in r["by_temperature"]["2"]["sample_scores"]]
    assert sum(hot) / len(hot) == pytest.approx(m["pass@1/T=2"], abs=1e-4)
    assert {"response_length/T=0.5", "response_length/T=2"} <= set(m)


def test_response_lengths_count_tokens_overall_correct_and_wrong(
    tmp_path: Path, tiny_base: Path, held_out: Path
) -> None:
    from posttrain.core.models import load_tokenizer

    text = recipe(tmp_path, tiny_base, held_out, SCRIPTED.format(slip=0.3))
    m = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["eval"]["metrics"]
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    tok = load_tokenizer(str(tiny_base))  # the scripted engine reports no counts: the model's tokenizer counts
    pairs = [(len(tok(c, add_special_tokens=False)["input_ids"]), s == 1.0)
             for r in rows for c, s in zip(r["samples"], r["sample_scores"], strict=True)]
    right = [n for n, ok in pairs if ok]
    wrong = [n for n, ok in pairs if not ok]
    assert right and wrong
    assert m["response_length"] == pytest.approx(sum(n for n, _ in pairs) / len(pairs), abs=0.05)
    assert m["response_length_correct"] == pytest.approx(sum(right) / len(right), abs=0.05)
    assert m["response_length_wrong"] == pytest.approx(sum(wrong) / len(wrong), abs=0.05)


def test_summary_without_a_tokenizer_leaves_lengths_out() -> None:
    rows = [{"greedy_score": 1.0, "samples": ["a", "bb"], "sample_scores": [1.0, 0.0]}]
    assert "response_length" not in summarize(rows, 1.0, [])
    assert summarize(rows, 1.0, [], lambda texts: [len(t) for t in texts])["response_length_correct"] == 1.0
    rows[0]["sample_lengths"] = [5, 7]  # the engine's counts win over counting the text
    out = summarize(rows, 1.0, [])
    assert (out["response_length"], out["response_length_correct"], out["response_length_wrong"]) == (6.0, 5.0, 7.0)


@pytest.mark.parametrize(("stage", "message"), [
    ("{name: e, kind: eval}", "give `data` (held-out prompts) or `benchmark`"),
    ("{name: e, kind: eval, benchmark: math50}", "unknown benchmark 'math50'"),
    ("{name: e, kind: eval, benchmark: humaneval, benchmark_options: {style: chat}}",
     "benchmark_options for 'humaneval': style: Input should be 'instruct' or 'complete'"),
    ("{name: e, kind: eval, data: x.jsonl, benchmark_options: {style: complete}}", "needs a `benchmark`"),
    ("{name: e, kind: eval, data: x.jsonl, temperatures: [0.6], sampling: {temperature: 1.0}}",
     "sampling.temperature 1 (the one pass@1 reports) is not among temperatures [0.6]"),
    ("{name: e, kind: eval, data: x.jsonl, temperatures: [0.0, 1.0]}", "temperatures must be > 0"),
])
def test_config_problems_are_found_when_the_recipe_is_validated(stage: str, message: str) -> None:
    from posttrain.core.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        parse_recipe(f"model: {{name_or_path: m}}\nstages:\n  - {stage}\n", kinds=KINDS)
    assert message in str(info.value)


def test_a_preset_fills_in_its_rewards_and_stop_strings_and_the_resolved_recipe_shows_them() -> None:
    from posttrain.eval_presets.code import COMPLETE_STOP
    from posttrain.run.runner import stage_hash

    text = """\
model: {name_or_path: m}
stages:
  - {name: he, kind: eval, benchmark: humaneval, benchmark_options: {style: complete}}
  - {name: he_own, kind: eval, benchmark: humaneval, rewards: [{name: code}], sampling: {stop: ["END"]}}
  - {name: plain, kind: eval, data: org/heldout}
"""
    r = parse_recipe(text, kinds=KINDS)
    he, own, plain = r.stages
    assert [x.name for x in he.rewards] == ["posttrain.eval_presets.code:HumanEvalCode"]
    assert he.rewards[0].kwargs == {"style": "complete"} and he.sampling.stop == COMPLETE_STOP
    assert [x.name for x in own.rewards] == ["code"] and own.sampling.stop == ["END"]
    # Reading the resolved recipe back gives the same stages, hashes and all.
    again = parse_recipe(r.to_yaml(), kinds=KINDS)
    assert [stage_hash(again, s, "b", {}) for s in again.stages] == [stage_hash(r, s, "b", {}) for s in r.stages]
    # Unset, the new keys stay out of a stage's config (and hash): older runs keep skipping finished stages.
    assert not {"benchmark", "benchmark_options", "temperatures"} & set(plain.model_dump())


# --------------------------------------------------------------------------------------------------
# With tools: a real model's calls run in the sandbox, and the metrics say how the tools were used

TOOL_EVAL = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {model}}}
stages:
  - name: eval
    kind: eval
    data: {data}
    samples: 2
    sampling: {{temperature: 1.0, max_new_tokens: 60}}
{tools}"""


def test_an_eval_with_tools_runs_the_model_s_calls_and_reports_their_use(tmp_path: Path, tool_model: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Compute 12*34.", "solution": "408"}, {"prompt": "Compute 56*78.", "solution": "4368"},
            {"prompt": "Divide by zero.", "solution": "0"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tools = "    tools: [{name: python, timeout_s: 1, max_output_chars: 200}]\n    max_turns: 2\n"
    text = TOOL_EVAL.format(out=tmp_path / "with", model=tool_model, data=data, tools=tools)
    entry = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["eval"]
    assert entry["status"] == "done", entry
    m = entry["metrics"]
    assert m["accuracy"] == pytest.approx(2 / 3, abs=1e-4)  # the two products, from the tool's real output
    assert m["tools/used"] >= 0.8 and m["tools/turns"] >= 1.8
    assert 0 < m["tools/error_rate"] < 1  # the division by zero failed, in the sandbox, and the eval went on
    assert m["tools/accuracy_with_call"] > 0
    samples = [json.loads(line) for line in (tmp_path / "with" / "eval" / "samples.jsonl").read_text().splitlines()]
    greedy = samples[0]["greedy"]
    assert [t["role"] for t in greedy] == ["assistant", "tool", "assistant"] and greedy[1]["content"] == "408\n"
    # Response lengths count the model's tokens over its turns, not the tool's output.
    assert all(len(r["sample_lengths"]) == 2 for r in samples)
    # The same model without its tool: the calls are text that nothing runs, and nothing is answered.
    text = TOOL_EVAL.format(out=tmp_path / "without", model=tool_model, data=data, tools="")
    m = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["eval"]["metrics"]
    assert m["accuracy"] == 0.0 and "tools/used" not in m
