from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.core.errors import PluginError
from rewards.cli import RewardArg, parse_reward_arg, parse_rewards

ROOT = Path(__file__).resolve().parents[2]
POSTTRAIN = str(Path(sys.executable).parent / "posttrain")

ROWS = [
    {"id": 0, "prompt": "Compute 2+3.", "completion": "<think>2+3=5</think> It is \\boxed{5}.", "solution": "5"},
    {"id": 1, "prompt": "Compute 2+3.", "completion": "<think>2+3=6</think> It is \\boxed{6}.", "solution": "5"},
    {"id": 2, "prompt": "Compute 1/2.", "solution": "\\frac{1}{2}",
     "completion": [{"role": "assistant", "content": "<think>a</think> \\boxed{2^{-1}}"}]},
    {"id": 3, "prompt": "Compute 2+3.", "completion": "no reasoning, boom: \\boxed{5}", "solution": "5"},
]


def posttrain(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([POSTTRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_list_names_every_builtin_with_its_one_line_doc() -> None:
    result = posttrain("rewards", "list")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    for name in ("math", "format", "language", "overlong", "code", "genrm", "reward_model"):
        assert name in lines  # listed even while its module is not there yet: no crash
    assert "Math correctness" in lines["math"] and "R1 format" in lines["format"]
    assert "DAPO" in lines["overlong"] and "Language consistency" in lines["language"]


def test_score_writes_every_row_in_order_with_weighted_sum_and_errors(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [
        json.dumps(ROWS[0]),
        "{this is not json",
        json.dumps(ROWS[1]),
        "",
        json.dumps([1, 2]),
        json.dumps({"prompt": "no completion"}),
        json.dumps(ROWS[2], ensure_ascii=False),
        json.dumps(ROWS[3]),
    ])
    dst = tmp_path / "out" / "scored.jsonl"
    result = posttrain("rewards", "score", "--reward", "math", "--reward", "format:0.5",
                       "--reward", "tests.rewards.plugins:picky_reward:-1", "--input", str(src),
                       "--output", str(dst), "--workers", "2")
    assert result.returncode == 0, result.stderr
    rows = read_rows(dst)
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    assert all(r["completion"] == ROWS[i]["completion"] and r["solution"] == ROWS[i]["solution"]
               for i, r in enumerate(rows))
    picky = "tests.rewards.plugins:picky_reward"
    assert [r["rewards"]["math"] for r in rows] == [1.0, 0.0, 1.0, 1.0]
    assert [r["rewards"]["format"] for r in rows] == [1.0, 1.0, 1.0, 0.0]
    assert rows[1]["reward"] == pytest.approx(0.0 + 0.5 * 1.0 - 1.0)
    # A plugin that raises on a row: null and an error for that row, the others are scored.
    assert [r["rewards"][picky] for r in rows] == [1.0, 1.0, 1.0, None]
    assert all("errors" not in r for r in rows[:3])
    assert list(rows[3]["errors"]) == [picky] and "cannot score" in rows[3]["errors"][picky]
    assert rows[3]["reward"] == pytest.approx(1.0 + 0.5 * 0.0)  # weighted sum of the non-null scores
    for lineno in (2, 5, 6):
        assert f"{src}:{lineno}: skipped" in result.stderr
    assert f"{src}:4:" not in result.stderr  # a blank line is not a row, nor an error
    assert "3 malformed lines" in result.stderr


def test_reward_kwargs_and_columns_reach_the_rewards(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [
        json.dumps({"completion": "<think>x</think> The answer is four.", "language": "en"}),
        json.dumps({"completion": "<think>x</think> 答案是四", "language": "en"}),
        json.dumps({"completion": "<think>x</think> 答案是四", "language": "zh"}),
    ])
    dst = tmp_path / "out.jsonl"
    result = posttrain("rewards", "score", "--reward", "language", "--reward", "overlong:2",
                       "--reward-kwargs", 'overlong={"max_length": 30, "cache_length": 10, "unit": "chars"}',
                       "--input", str(src), "--output", str(dst))
    assert result.returncode == 0, result.stderr
    rows = read_rows(dst)
    assert [r["rewards"]["language"] for r in rows] == [1.0, 0.0, 1.0]
    # 36 characters > 30: -1; 21 characters: (20 - 21) / 10 = -0.1.
    assert [r["rewards"]["overlong"] for r in rows] == [-1.0, pytest.approx(-0.1), pytest.approx(-0.1)]
    assert rows[0]["reward"] == pytest.approx(1.0 - 2.0)


def test_resume_keeps_finished_rows_and_cuts_a_half_written_line(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in ROWS])
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    args = ["rewards", "score", "--reward", "math", "--reward", "format", "--input", str(src), "--workers", "0",
            "--batch-size", "1"]
    assert posttrain(*args, "--output", str(full)).returncode == 0
    lines = full.read_text().splitlines(keepends=True)
    part.write_text(lines[0] + lines[1][:25])  # as if killed while writing the second row
    result = posttrain(*args, "--output", str(part), "--resume")
    assert result.returncode == 0, result.stderr
    assert part.read_text() == full.read_text()
    assert "1 kept from the interrupted run" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reward", "nope"], "unknown reward 'nope'"),
        (["--reward", "math", "--reward-kwargs", "math={bad json"], "not valid JSON"),
        (["--reward", "math", "--reward-kwargs", "format={}"], "NAME one of the --reward names"),
        (["--reward", "math", "--reward-kwargs", "math=[1]"], "expected a JSON object"),
        (["--reward", "overlong"], "bad options"),
        (["--reward", "math", "--reward", "math:2"], "each reward may appear once"),
    ],
)
def test_bad_options_exit_2_without_a_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(ROWS[0])])
    result = posttrain("rewards", "score", *args, "--input", str(src), "--output", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    result = posttrain("rewards", "score", "--reward", "math", "--input", str(tmp_path / "none.jsonl"),
                       "--output", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_parse_reward_arg() -> None:
    assert parse_reward_arg("math") == RewardArg("math", 1.0)
    assert parse_reward_arg("format:0.5") == RewardArg("format", 0.5)
    assert parse_reward_arg("pkg.mod:fn") == RewardArg("pkg.mod:fn", 1.0)
    assert parse_reward_arg("pkg.mod:fn:-2") == RewardArg("pkg.mod:fn", -2.0)
    with pytest.raises(PluginError, match="finite"):
        parse_reward_arg("math:nan")
    specs = parse_rewards(["math", "overlong:2"], ['overlong={"max_length": 8, "cache_length": 2}'])
    assert specs[1] == RewardArg("overlong", 2.0, {"max_length": 8, "cache_length": 2})


def test_a_pathological_answer_scores_zero_with_an_error_in_the_output(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [
        json.dumps({"completion": "<think>big</think> \\boxed{9^{9^{9^{9}}}}", "solution": "2"}),
        json.dumps({"completion": "<think>ok</think> \\boxed{2}", "solution": "2"}),
    ])
    dst = tmp_path / "out.jsonl"
    result = posttrain("rewards", "score", "--reward", "math", "--reward-kwargs", 'math={"timeout_s": 1}',
                       "--input", str(src), "--output", str(dst), "--workers", "1")
    assert result.returncode == 0, result.stderr
    rows = read_rows(dst)
    assert [r["rewards"]["math"] for r in rows] == [0.0, 1.0]
    assert "timed out" in rows[0]["errors"]["math"] and "errors" not in rows[1]
    assert "1 failed" in result.stderr


def test_an_answer_that_cannot_be_read_is_zero_with_its_error_in_the_output(tmp_path: Path) -> None:
    """R1-Zero's layout is read; an answer part with nothing to read says so in `errors`, next to its 0."""
    src = write_lines(tmp_path / "in.jsonl", [
        json.dumps({"completion": "<think>r</think>\n<answer>\n12\n</answer>", "solution": "12"}),
        json.dumps({"completion": "<think>r</think>\n<answer>\nI am not sure\n</answer>", "solution": "12"}),
    ])
    dst = tmp_path / "out.jsonl"
    result = posttrain("rewards", "score", "--reward", "math", "--input", str(src), "--output", str(dst),
                       "--workers", "1")
    assert result.returncode == 0, result.stderr
    rows = read_rows(dst)
    assert [r["rewards"]["math"] for r in rows] == [1.0, 0.0]
    assert "errors" not in rows[0]
    assert rows[1]["errors"]["math"].startswith("no answer could be read from 'I am not sure'")
    assert "1 failed (1 of them scored, with the reason" in result.stderr


def test_a_reward_that_fails_on_every_row_exits_1_with_its_first_error(tmp_path: Path) -> None:
    # No `solution` column: the math reward cannot score any row. The rows are still written, with errors.
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"completion": "\\boxed{1}"}),
                                              json.dumps({"completion": "\\boxed{2}"})])
    dst = tmp_path / "out.jsonl"
    result = posttrain("rewards", "score", "--reward", "math", "--reward", "format", "--input", str(src),
                       "--output", str(dst))
    assert result.returncode == 1, result.stderr
    assert "reward math failed on all 2 rows; first error: DataError: the math reward needs a `solution`" \
        in result.stderr
    assert "Traceback" not in result.stderr
    rows = read_rows(dst)
    assert [r["rewards"]["math"] for r in rows] == [None, None] and all("math" in r["errors"] for r in rows)
    assert all(r["rewards"]["format"] is not None for r in rows)


def test_data_columns_never_replace_the_arguments_of_the_reward_call(tmp_path: Path) -> None:
    # Columns named like TRL's arguments (`completions`, `prompts`, `trainer_state`, `log_metric`) or like a bound
    # option of a reward (`scale`) stay in the rows but never reach a reward; the other columns do.
    row = {"completion": "abcd", "solution": "abcd", "completions": ["x"], "prompts": "p", "trainer_state": 3,
           "log_metric": 1, "scale": 100}
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(row)])
    dst = tmp_path / "out.jsonl"
    result = posttrain("rewards", "score", "--reward", "tests.rewards.plugins:scaled_length",
                       "--reward-kwargs", 'tests.rewards.plugins:scaled_length={"scale": 2}',
                       "--reward", "tests.rewards.plugins:column_reward", "--input", str(src), "--output", str(dst))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "completions, log_metric, prompts, scale, trainer_state" in result.stderr  # named once, as kept back
    (out,) = read_rows(dst)
    assert out["rewards"] == {"tests.rewards.plugins:scaled_length": 8.0, "tests.rewards.plugins:column_reward": 1.0}
    assert {k: out[k] for k in row} == row and "errors" not in out


def test_an_output_that_is_a_directory_or_under_a_file_is_one_line_exit_2(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(ROWS[0])])
    (tmp_path / "a_file").write_text("")
    for output, message in [(tmp_path, f"--output {tmp_path} is a directory"),
                            (tmp_path / "a_file" / "o.jsonl", f"{tmp_path / 'a_file'}: a file is in the way")]:
        result = posttrain("rewards", "score", "--reward", "math", "--input", str(src), "--output", str(output))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and message in line


@pytest.mark.parametrize(
    ("reward", "model"),
    [("reward_model", "{tmp}/runs/tiny/reward_modle/model"), ("reward_model", "runs/tiny/reward_modle/model"),
     ("reward_model", "someone/reward-modle"), ("genrm", "{tmp}/judge_modle")],
)
def test_a_reward_model_that_cannot_load_fails_before_any_row_naming_the_path(
        tmp_path: Path, reward: str, model: str) -> None:
    model = model.format(tmp=tmp_path)
    options = {"model": model, **({"backend": "hf"} if reward == "genrm" else {})}
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(ROWS[0])])
    dst = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    if "/" in model and not model.startswith(("/", "runs")):
        env["HF_HUB_OFFLINE"] = "1"  # a hub name: offline, so the answer is certain and quick
    start = time.monotonic()
    result = posttrain("rewards", "score", "--reward", reward, "--reward-kwargs", f"{reward}={json.dumps(options)}",
                       "--input", str(src), "--output", str(dst), env=env)
    seconds = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    (line,) = [ln for ln in result.stderr.strip().splitlines() if "Warning" not in ln and ln.strip()]
    assert line.startswith(f"error: {reward}") and (str(Path(model).absolute()) in line or repr(model) in line), line
    assert not dst.exists()  # failed before scoring a row
    assert seconds < 20  # no hub retries (they took 25-75 s)
