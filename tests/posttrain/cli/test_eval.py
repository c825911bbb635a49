"""`posttrain eval MODEL --benchmark NAME`: one command, no recipe, the eval stage's outputs."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from posttrain.cli.eval import build_recipe, default_output_dir
from posttrain.cli.main import build_parser, main
from posttrain.core.errors import PosttrainError
from tests.posttrain.eval_presets.test_code import sandboxed

SANDBOX_STATUSES = ("compile_error", "runtime_error", "timeout", "memory_limit", "killed")


@pytest.fixture
def keep_sigterm() -> Iterator[None]:
    """The command turns SIGTERM into Ctrl-C for its run; give pytest its own handler back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["eval", *argv])


@sandboxed
def test_humaneval_on_a_saved_tiny_model_end_to_end(tmp_path: Path, tiny_base: Path, keep_sigterm: None) -> None:
    out = tmp_path / "he"
    argv = ["eval", str(tiny_base), "--benchmark", "humaneval", "--limit", "2", "--samples", "2",
            "--max-new-tokens", "16", "--output-dir", str(out),
            "--set", "stages.humaneval.benchmark_options.style=complete"]  # a base model continues the prompt
    proc = subprocess.run([sys.executable, "-m", "posttrain.cli", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "humaneval: done: greedy 0.0 %, pass@1 0.0 %" in proc.stdout
    entry = json.loads((out / "report.json").read_text())["stages"]["humaneval"]
    m = entry["metrics"]
    assert (entry["kind"], entry["status"], m["benchmark"], m["model"], m["prompts"]) == (
        "eval", "done", "humaneval", str(tiny_base), 2)
    assert (m["accuracy"], m["pass@1"], m["k"], m["temperature"]) == (0.0, 0.0, 2, 0.6)  # random weights score 0
    assert 0 < m["response_length"] == m["response_length_wrong"] <= 16 and "response_length_correct" not in m
    rows = [json.loads(line) for line in (out / "humaneval" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    # Every completion ran in the sandbox as the body of the function: its verdicts are in the rows.
    verdicts = [r["greedy_error"] for r in rows] + [e for r in rows for e in r["sample_errors"]]
    assert all(s == 0.0 for r in rows for s in [r["greedy_score"], *r["sample_scores"]])
    assert any(v and v.startswith(SANDBOX_STATUSES) for v in verdicts), verdicts
    assert "## 1. humaneval (`eval`)" in (out / "report.md").read_text()
    # The same command again: nothing to do.
    assert main(argv) == 0
    assert json.loads((out / "report.json").read_text())["stages"]["humaneval"]["status"] == "skipped"


def test_the_recipe_it_builds(tmp_path: Path) -> None:
    recipe = build_recipe(args("org/model", "--benchmark", "math500,gsm8k", "--benchmark", "gpqa", "--limit", "5",
                               "--temperature", "0.6,1.0", "--samples", "8", "--output-dir", str(tmp_path),
                               "--set", "stages.gpqa.benchmark_options.shuffle_seed=3"))
    assert recipe.model.name_or_path == "org/model" and recipe.output_dir == str(tmp_path)
    assert recipe.stage_names() == ["math500", "gsm8k", "gpqa"]
    gpqa = recipe.stage("gpqa")
    assert (gpqa.kind, gpqa.benchmark, gpqa.max_samples, gpqa.samples) == ("eval", "gpqa", 5, 8)
    assert (gpqa.sampling.temperature, gpqa.temperatures) == (0.6, [0.6, 1.0])
    assert gpqa.benchmark_options == {"shuffle_seed": 3}
    assert [r.name for r in recipe.stage("math500").rewards] == ["math"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("")
    single = build_recipe(args("m", "--benchmark", "aime24", "--data", str(rows)))
    assert single.stage("aime24").temperatures is None and single.stage("aime24").data == str(rows)
    assert single.stage("aime24").sampling.temperature == 0.6
    with pytest.raises(PosttrainError, match="single --benchmark"):
        build_recipe(args("m", "--benchmark", "math500,gsm8k", "--data", str(rows)))


def test_default_output_dir(tmp_path: Path) -> None:
    assert default_output_dir("deepseek-ai/DeepSeek-R1") == "runs/eval/deepseek-ai--DeepSeek-R1"
    (tmp_path / "grpo" / "model").mkdir(parents=True)
    assert default_output_dir(str(tmp_path / "grpo" / "model")) == "runs/eval/grpo-model"


def test_a_user_error_exits_2_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "m", "--benchmark", "math50"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'math50'" in err and "Traceback" not in err
