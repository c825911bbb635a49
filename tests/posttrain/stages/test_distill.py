from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from posttrain.core.errors import RecipeError
from posttrain.core.run_folder import StageState
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS

ROOT = Path(__file__).resolve().parents[3]
PLUGINS = "tests.data_pipelines.plugins"

RECIPE = """\
output_dir: {out}
seed: {seed}
model:
  name_or_path: {base}
stages:
  - name: distill
    kind: distill
    source:
      function: data_pipelines.tasks.arithmetic:train_prompts
      kwargs: {{n: {prompts}}}
      keep: [solution]
    eval:
      function: data_pipelines.tasks.arithmetic:eval_prompts
      kwargs: {{n: 40}}
      keep: [solution]
    teacher:
      backend: scripted
      model: {teacher}
      name: r1
      options: {options}
    n: 4
    rewards:
      - name: {plugins}:boxed_answer
      - name: {plugins}:think_format
    keep_per_prompt: 2
    chunk_size: {chunk}
    decontamination: {{ngram: 5}}
"""


def recipe_text(out: Path, base: Path, prompts: int = 30, chunk: int = 8, seed: int = 0,
                teacher: str = f"{PLUGINS}:slow_teacher", options: str = "{delay_s: 0.0}") -> str:
    return RECIPE.format(out=out, base=base, prompts=prompts, chunk=chunk, seed=seed, teacher=teacher,
                         options=options, plugins=PLUGINS)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _timeless(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k not in ("seconds", "samples_per_s")}


def test_distill_writes_the_contracted_outputs(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    report = run_recipe(parse_recipe(recipe_text(out, tiny_base), kinds=KINDS))
    entry = report["stages"]["distill"]
    assert entry["status"] == "done", entry
    d = out / "distill"
    data, pairs, stats = _jsonl(d / "data.jsonl"), _jsonl(d / "pairs.jsonl"), json.loads((d / "stats.json").read_text())

    assert {"id", "prompt", "completion", "teacher", "scores", "solution"} <= set(data[0])
    assert all(r["teacher"] == "r1" and r["scores"] == {"boxed_answer": 1.0, "think_format": 1.0} for r in data)
    assert len({r["id"] for r in data}) == len(data)
    assert all(r["completion"].endswith(f"\\boxed{{{r['solution']}}}.") for r in data)
    assert {"prompt", "chosen", "rejected"} <= set(pairs[0])
    assert all(p["chosen"] != p["rejected"] for p in pairs)

    # Counts add up: every generated sample is kept or rejected for one reason.
    assert stats["prompts"] == 30 and stats["generated"] == 30 * 4 and stats["kept"] == len(data)
    assert stats["kept"] + sum(stats["rejected"].values()) == stats["generated"]
    assert sum(stats["pass_rate_histogram"].values()) == 30
    assert 0 < stats["acceptance_rate"] < 1 and 0.3 < stats["pass_rate"] < 0.9
    for key in ("prompts", "generated", "kept", "acceptance_rate", "rejected"):
        assert entry["metrics"][key] == stats[key]

    # Prompts for GRPO, eval prompts for the eval stages, disjoint.
    prompts, held_out = _jsonl(d / "prompts.jsonl"), _jsonl(d / "eval.jsonl")
    assert len(prompts) == 30 and set(prompts[0]) == {"id", "prompt", "solution"}
    assert len(held_out) == 40 and set(held_out[0]) == {"id", "prompt", "solution"}
    assert not {p["prompt"] for p in prompts} & {p["prompt"] for p in held_out}
    assert stats["eval_prompts"] == 40 and stats["prompts_skipped"] == {}


def test_rerun_of_a_finished_stage_is_skipped(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    run_recipe(parse_recipe(recipe_text(out, tiny_base, prompts=6), kinds=KINDS))
    report = run_recipe(parse_recipe(recipe_text(out, tiny_base, prompts=6), kinds=KINDS))
    assert report["stages"]["distill"]["status"] == "skipped"
    assert report["stages"]["distill"]["metrics"]["generated"] == 24


def test_train_prompts_in_the_eval_set_are_dropped(tmp_path: Path, tiny_base: Path) -> None:
    leaked = tmp_path / "train.jsonl"
    rows = [{"id": f"t{i}", "prompt": f"Compute {i}+{i}.", "solution": str(2 * i)} for i in range(10, 20)]
    rows.append({"id": "leak", "prompt": "compute 152 + 915 .", "solution": "1067"})  # eval's first prompt
    leaked.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = recipe_text(tmp_path / "run", tiny_base).replace(
        "function: data_pipelines.tasks.arithmetic:train_prompts\n      kwargs: {n: 30}", f"path: {leaked}")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    stats = json.loads((tmp_path / "run" / "distill" / "stats.json").read_text())
    assert report["stages"]["distill"]["status"] == "done"
    assert stats["prompts"] == 11 and stats["prompts_skipped"] == {"contaminated": 1} and stats["generated"] == 40
    assert "leak" not in {r["id"] for r in _jsonl(tmp_path / "run" / "distill" / "prompts.jsonl")}


def test_teacher_error_is_retried_then_recorded(tmp_path: Path, tiny_base: Path) -> None:
    source = tmp_path / "train.jsonl"
    rows = [{"prompt": "Compute 0+0.", "solution": "0"}, {"prompt": "Compute 17+5.", "solution": "22"},
            {"prompt": "Compute 12+1.", "solution": "13"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = recipe_text(tmp_path / "run", tiny_base, teacher=f"{PLUGINS}:flaky_teacher",
                       options=f"{{state_dir: '{tmp_path}', slip: 0.0, malformed: 0.0}}")
    text = text.replace("function: data_pipelines.tasks.arithmetic:train_prompts\n      kwargs: {n: 30}",
                        f"path: {source}")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert report["stages"]["distill"]["status"] == "done"
    d = tmp_path / "run" / "distill"
    stats = json.loads((d / "stats.json").read_text())
    assert stats["teacher_errors"] == 1 and stats["rejected"]["teacher_error"] == 4
    assert stats["generated"] == 12 and stats["kept"] + sum(stats["rejected"].values()) == 12
    (error,) = _jsonl(d / "errors.jsonl")
    assert error["teacher"] == "r1" and "crashed on 0+0" in error["error"]
    assert {r["prompt"] for r in _jsonl(d / "data.jsonl")} == {"Compute 17+5.", "Compute 12+1."}
    assert (tmp_path / "Compute_17+5..tried").exists()  # it failed once and was retried


def test_reward_plugin_from_a_temporary_module(
    tmp_path: Path, tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "plugins_dir" / "my_distill_rewards.py"
    module.parent.mkdir()
    module.write_text(
        "def short_enough(completions, max_chars=60, **kwargs):\n"
        "    return [1.0 if len(c) <= max_chars else 0.0 for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(module.parent))
    text = recipe_text(tmp_path / "run", tiny_base, prompts=20).replace(
        f"      - name: {PLUGINS}:think_format\n",
        f"      - name: {PLUGINS}:think_format\n      - name: my_distill_rewards:short_enough\n"
        "        kwargs: {max_chars: 66}\n",
    )
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert report["stages"]["distill"]["status"] == "done"
    d = tmp_path / "run" / "distill"
    data = _jsonl(d / "data.jsonl")
    assert data and all(r["scores"]["short_enough"] == 1.0 and len(r["completion"]) <= 66 for r in data)
    stats = json.loads((d / "stats.json").read_text())
    assert stats["rejected"].get("reward_short_enough", 0) > 0  # 3-digit traces are longer than 66 characters


def test_hf_teacher_from_the_base_model(tmp_path: Path, tiny_base: Path) -> None:
    text = recipe_text(tmp_path / "run", tiny_base, prompts=3, chunk=2).replace(
        f"      backend: scripted\n      model: {PLUGINS}:slow_teacher\n", "      backend: hf\n      model: base\n"
    ).replace("options: {delay_s: 0.0}", "batch_size: 8").replace("    n: 4\n", "    n: 2\n    sampling: "
                                                                   "{max_new_tokens: 6, temperature: 1.0}\n")
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    entry = report["stages"]["distill"]
    assert entry["status"] == "done", entry
    stats = json.loads((tmp_path / "run" / "distill" / "stats.json").read_text())
    # An untrained model answers nothing right: all 6 samples generated, all rejected by the rewards.
    assert stats["generated"] == 6 and stats["kept"] == 0 and stats["teacher_errors"] == 0
    assert sum(v for k, v in stats["rejected"].items() if k.startswith("reward_")) == 6
    assert stats["pass_rate_histogram"] == {"0/2": 3}


def test_bad_stage_options_are_recipe_errors(tmp_path: Path, tiny_base: Path) -> None:
    text = recipe_text(tmp_path, tiny_base).replace("    keep_per_prompt: 2\n",
                                                    "    keep_per_prompt: 2\n    keep: {thresholds: {mth: 1}}\n")
    with pytest.raises(RecipeError, match=r"stages\[0\].*keep.thresholds names \['mth'\]"):
        parse_recipe(text, kinds=KINDS)
    text = recipe_text(tmp_path, tiny_base).replace("    n: 4\n", "    n: 0\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.n"):
        parse_recipe(text, kinds=KINDS)
    text = recipe_text(tmp_path, tiny_base).replace("backend: scripted", "backend: scriptd")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.teacher.*backend"):
        parse_recipe(text, kinds=KINDS)


def test_resume_drops_rows_of_an_unfinished_chunk(tmp_path: Path, tiny_base: Path) -> None:
    out = tmp_path / "run"
    run_recipe(parse_recipe(recipe_text(out, tiny_base, prompts=12, chunk=4), kinds=KINDS))
    d = out / "distill"
    finished = {name: (d / name).read_text() for name in ("data.jsonl", "pairs.jsonl", "stats.json")}
    # As if the run had been cut off after writing part of a chunk it never recorded in progress.json.
    with open(d / "data.jsonl", "a") as f:
        f.write('{"id": "half-written"')
    state = json.loads((d / "stage.json").read_text())
    (d / "stage.json").write_text(json.dumps({**state, "status": "interrupted"}))
    report = run_recipe(parse_recipe(recipe_text(out, tiny_base, prompts=12, chunk=4), kinds=KINDS))
    assert report["stages"]["distill"]["status"] == "done"
    assert (d / "data.jsonl").read_text() == finished["data.jsonl"]
    assert (d / "pairs.jsonl").read_text() == finished["pairs.jsonl"]
    assert _timeless(json.loads((d / "stats.json").read_text())) == _timeless(json.loads(finished["stats.json"]))


def test_tiny_recipe_distill_stage(tmp_path: Path) -> None:
    """The shipped recipe's stage with the real `math` and `format` rewards, on fewer prompts."""
    from posttrain.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "tiny-r1.yaml", ["stages.distill.source.kwargs.n=200",
                                                           "stages.distill.chunk_size=50"], output_dir=str(tmp_path),
                         kinds=KINDS)
    report = run_recipe(recipe, only=["distill"])
    entry = report["stages"]["distill"]
    assert entry["status"] == "done", entry
    stats = json.loads((tmp_path / "distill" / "stats.json").read_text())
    assert stats["generated"] == 800 and stats["eval_prompts"] >= 500
    assert 0.5 < stats["pass_rate"] < 0.72  # the teacher is wrong or malformed ~40 % of the time
    assert 0.9 < stats["prompt_yield"] < 1.0
    assert {"reward_math", "reward_format", "keep_per_prompt"} <= set(stats["rejected"])
    data = _jsonl(tmp_path / "distill" / "data.jsonl")
    assert len(data) == stats["kept"] and all(r["scores"] == {"math": 1.0, "format": 1.0} for r in data)


def _cli(python: str, recipe: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([python, "-m", "posttrain.cli", "run", str(recipe)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_mid_stage_then_resume_writes_the_same_rows(tmp_path: Path, tiny_base: Path, python: str) -> None:
    killed, ref = tmp_path / "killed", tmp_path / "reference"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(killed, tiny_base, prompts=120, chunk=5, options="{delay_s: 0.1}"))
    proc = _cli(python, recipe)
    data = killed / "distill" / "data.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not data.exists() or len(data.read_text().splitlines()) < 10):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert StageState.read(killed / "distill").status == "interrupted"  # type: ignore[union-attr]
    progress = json.loads((killed / "distill" / "progress.json").read_text())
    assert 0 < progress["next_prompt"] < 120, "the run should have been stopped mid-stage"

    proc = _cli(python, recipe)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resuming at prompt" in err

    ref_recipe = tmp_path / "ref.yaml"
    ref_recipe.write_text(recipe_text(ref, tiny_base, prompts=120, chunk=5, options="{delay_s: 0.0}"))
    proc = _cli(python, ref_recipe)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    for name in ("data.jsonl", "pairs.jsonl", "prompts.jsonl", "eval.jsonl"):
        assert (killed / "distill" / name).read_text() == (ref / "distill" / name).read_text(), name
    rows = _jsonl(killed / "distill" / "data.jsonl")
    assert len({r["id"] for r in rows}) == len(rows)
    stats = json.loads((killed / "distill" / "stats.json").read_text())
    assert _timeless(stats) == _timeless(json.loads((ref / "distill" / "stats.json").read_text()))
    assert stats["generated"] == 480 and stats["kept"] == len(rows)
    assert stats["kept"] + sum(stats["rejected"].values()) == stats["generated"]



TOOL_DISTILL = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: distill
    kind: distill
    source:
      function: data_pipelines.tasks.multiplication:train_prompts
      kwargs: {{n: 6}}
      keep: [solution]
    teacher: {{backend: scripted, model: "{teacher}"}}
    tools: [{{name: python, timeout_s: 2}}]
    max_turns: 2
    n: 4
    rewards: [{{name: math}}, {{name: format, kwargs: {{strict: true}}}}]
    keep_per_prompt: 4
    pairs_per_prompt: 1
    decontamination: null
"""


def test_distill_with_tools_keeps_whole_conversations_and_filters_the_model_s_turns(tmp_path: Path,
                                                                                   tiny_base: Path) -> None:
    text = TOOL_DISTILL.format(out=tmp_path, base=tiny_base, teacher=f"{PLUGINS}:chatty_tool_teacher")
    entry = run_recipe(parse_recipe(text, kinds=KINDS))["stages"]["distill"]
    assert entry["status"] == "done", entry
    rows = _jsonl(tmp_path / "distill" / "data.jsonl")
    # Per prompt: samples 0 and 1 kept (another program, the same answer: not a duplicate); 2 mixes languages in its
    # own words; 3 repeats 0. The Chinese the tool printed is not the model's text: 0 and 1 pass the language check.
    assert len(rows) == 12 and sorted({r["id"].rsplit("-", 1)[1] for r in rows}) == ["0", "1"]
    assert entry["metrics"]["rejected"] == {"language_mixing": 6, "duplicate": 6}
    row = rows[0]
    assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]  # a chat, with tools
    call, output, answer = row["completion"]
    assert call["tool_calls"][0]["function"]["name"] == "python" and output["role"] == "tool"
    assert output["content"].startswith(row["solution"] + "\n")  # the sandbox's real output
    assert "这是工具的输出" in output["content"] and answer["content"] == f"The answer is \\boxed{{{row['solution']}}}."
    stats = json.loads((tmp_path / "distill" / "stats.json").read_text())
    assert stats["tools"] == {"calls_per_sample": 1.0, "used": 1.0, "error_rate": 0.0, "kept_used": 1.0}
    assert entry["metrics"]["tools"]["used"] == 1.0
    pairs = _jsonl(tmp_path / "distill" / "pairs.jsonl")
    assert pairs and all(isinstance(p["chosen"], list) and p["rejected_reason"] == "language_mixing" for p in pairs)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
