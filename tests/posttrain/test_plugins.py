from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.core.errors import PluginError
from posttrain.core.plugins import load_object

POSTTRAIN = Path(sys.executable).with_name("posttrain")


def test_load_object_both_spellings() -> None:
    assert load_object("os.path:join") is load_object("os.path.join")


@pytest.mark.parametrize(
    ("ref", "message"),
    [("nodots", "not an importable reference"), ("no_such_module_xyz:f", "cannot import module"),
     ("os.path:no_such_attr", "has no attribute")],
)
def test_load_object_errors_name_the_problem(ref: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        load_object(ref)


def test_a_module_in_the_working_directory_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd_only_plugin.py").write_text("VALUE = 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert load_object("cwd_only_plugin:VALUE") == 42
    assert sys.path[-1] == str(tmp_path)  # appended: installed modules of the same name still win


def test_console_script_finds_a_plugin_in_the_working_directory(tmp_path: Path) -> None:
    """`posttrain` (a console script, no cwd on sys.path) still imports my_rewards.py next to the user."""
    (tmp_path / "my_rewards.py").write_text(
        "def shortness(completions, **kwargs):\n    return [1.0 / (1 + len(c)) for c in completions]\n"
    )
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "p", "completion": "abc"}) + "\n")
    proc = subprocess.run(
        [str(POSTTRAIN), "rewards", "score", "--reward", "my_rewards:shortness", "--input", "in.jsonl",
         "--output", "out.jsonl"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["rewards"] == {"my_rewards:shortness": pytest.approx(0.25)}
