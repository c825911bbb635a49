"""Reward plugins as users ship them: a module on the path, and an installed distribution whose
entry points (group `posttrain.rewards`) name its rewards. The distribution is real metadata in a
temporary directory (a `*.dist-info` with `entry_points.txt`), found by importlib.metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rewards.registry import get_reward, list_rewards

ROOT = Path(__file__).resolve().parents[2]
POSTTRAIN = str(Path(sys.executable).parent / "posttrain")
MODULE = "posttrain_test_shout"

PLUGIN = '''
"""A reward package as a user would ship it."""

from __future__ import annotations

from typing import Any


class ShoutReward:
    """Share of upper-case letters in the completion (plus `bonus`)."""

    def __init__(self, bonus: float = 0.0):
        self.bonus = bonus

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [sum(ch.isupper() for ch in t) / max(1, sum(ch.isalpha() for ch in t)) + self.bonus for t in texts]


def exclaim(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for a completion that ends with '!'."""
    return [float(str(c).rstrip().endswith("!")) for c in completions]


def fragile(completions: list[Any], **kwargs: Any) -> list[float]:
    """Raises on a completion that contains 'boom'."""
    if any("boom" in str(c) for c in completions):
        raise ValueError("fragile reward met a boom")
    return [1.0] * len(completions)
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the plugin module and an installed distribution that declares its entry points."""
    root = tmp_path_factory.mktemp("site")
    (root / f"{MODULE}.py").write_text(textwrap.dedent(PLUGIN))
    dist = root / f"{MODULE}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: posttrain-test-shout\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[posttrain.rewards]\nshout = {MODULE}:ShoutReward\nfragile = {MODULE}:fragile\n")
    return root


@pytest.fixture
def on_path(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(plugin_dir))
    return plugin_dir


def env_with(plugin_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_dir), env.get("PYTHONPATH", "")) if p)
    return env


def test_entry_point_and_path_in_process(on_path: Path) -> None:
    shout = get_reward("shout", bonus=0.5)
    assert shout(["ABcd", [{"role": "assistant", "content": "QUIET"}]]) == [1.0, 1.5]
    assert shout.__name__ == "shout"
    assert get_reward(f"{MODULE}:exclaim")(["yes!", "no"]) == [1.0, 0.0]
    listed = dict(list_rewards())
    assert listed["shout"] == "Share of upper-case letters in the completion (plus `bonus`)."
    assert listed["fragile"] == "Raises on a completion that contains 'boom'."


def test_raising_entry_point_gives_none_and_an_error(on_path: Path) -> None:
    fragile = get_reward("fragile")
    scores, errors = fragile.score_with_errors(["fine", "boom", "ok"])
    assert scores == [1.0, None, 1.0]
    assert "fragile reward met a boom" in (errors[1] or "")
    assert fragile.error_count == 1


def test_plugins_from_the_cli(plugin_dir: Path, tmp_path: Path) -> None:
    env = env_with(plugin_dir)
    listed = subprocess.run([POSTTRAIN, "rewards", "list"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:1] == ["shout"] and "upper-case" in line for line in listed.stdout.splitlines())

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"completion": c}) + "\n" for c in ["HELLO!", "boom", "Hi"]))
    dst = tmp_path / "out.jsonl"
    result = subprocess.run(
        [POSTTRAIN, "rewards", "score", "--reward", "shout:2", "--reward", "fragile",
         "--reward", f"{MODULE}:exclaim", "--reward-kwargs", 'shout={"bonus": 1}',
         "--input", str(src), "--output", str(dst)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["rewards"]["shout"] for r in rows] == [2.0, 1.0, 1.5]
    assert [r["rewards"]["fragile"] for r in rows] == [1.0, None, 1.0]
    assert [r["rewards"][f"{MODULE}:exclaim"] for r in rows] == [1.0, 0.0, 0.0]
    assert [r["reward"] for r in rows] == [6.0, 2.0, 4.0]
    assert rows[1]["errors"] == {"fragile": "ValueError: fragile reward met a boom"}
    assert "errors" not in rows[0] and "errors" not in rows[2]


@pytest.mark.slow
def test_plugins_from_a_recipe(plugin_dir: Path, tmp_path: Path) -> None:
    """A distill stage names one plugin by entry point (with options) and one by path; both score its samples."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""
        output_dir: {tmp_path / "run"}
        seed: 0
        model: {{tiny: {{}}}}
        tokenizer: {{train: {{corpus: "data_pipelines.tasks.arithmetic:corpus"}}}}
        stages:
          - name: distill
            kind: distill
            source:
              function: "data_pipelines.tasks.arithmetic:train_prompts"
              kwargs: {{n: 12}}
              keep: [solution]
            teacher: {{backend: scripted, model: "data_pipelines.tasks.arithmetic:teacher", name: r1-scripted}}
            n: 2
            rewards:
              - name: math
              - name: shout
                weight: 0.5
                kwargs: {{bonus: 1.0}}
              - name: "{MODULE}:exclaim"
            keep: {{thresholds: {{exclaim: 0.0}}}}
            decontamination: null
        """))
    result = subprocess.run([POSTTRAIN, "run", str(recipe)], env=env_with(plugin_dir), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "distill" / "data.jsonl").read_text().splitlines()]
    assert rows, "no sample kept"
    for row in rows:
        assert row["scores"]["math"] == 1.0
        assert row["scores"]["shout"] >= 1.0  # the option reached the entry-point class
        assert row["scores"]["exclaim"] == 0.0
