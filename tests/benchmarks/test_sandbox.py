from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.run import normalise
from benchmarks.sandbox import SQUARES, humaneval, program, run
from rewards.sandbox.languages import missing_toolchain


def test_programs_are_the_humaneval_canonical_solutions() -> None:
    problems = humaneval()
    assert len(problems) == 164 and len({p["task_id"] for p in problems}) == 164
    text = program(problems[0])
    assert text.startswith(problems[0]["prompt"]) and text.endswith(f"check({problems[0]['entry_point']})\n")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (make setup installs it)")
def test_quick_run_returns_well_formed_rows() -> None:
    result = run(quick=True, workers=2, stdio_rows=1, tests_per_row=3, limit=4)
    json.dumps(result)
    if "skipped" in result:  # bubblewrap present but unable to create namespaces here
        pytest.skip(result["skipped"])
    table = normalise("sandbox", result)
    installed = [lang for lang in SQUARES if missing_toolchain(lang) is None]
    measured = [row for row in table["rows"] if row["ours"] is not None]
    assert len(table["rows"]) == 4 + len(SQUARES) and len(measured) == 4 + len(installed)
    for row in measured:
        assert row["ours"] > 0 and row["reference"] > 0 and row["unit"] in ("runs/s", "tests/s")
        assert row["higher_is_better"] and row["ratio"] == pytest.approx(row["ours"] / row["reference"])
    for lang in installed:  # every language's squares program passes all its tests, sandboxed and plain
        (row,) = [r for r in measured if r["name"].startswith(f"{lang} stdin/stdout")]
        assert "passed: ours 5/5, plain 5/5" in row["note"], row
    passed = result["details"]["passed"]
    assert passed == {"ours_serial": 4, "ours_fresh": 4, "ours_reward": 4, "plain_serial": 4, "plain_pool": 4,
                      "ours_c_tests": 3, "plain_c_tests": 3}
    assert result["params"]["problems"] == 4 and result["details"]["isolated"] is True
