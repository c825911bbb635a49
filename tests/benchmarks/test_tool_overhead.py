"""The tool-overhead benchmark: a GRPO step whose calls run in the sandbox against the same step answered in process."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.run import normalise
from benchmarks.tool_overhead import in_process, run


def test_the_reference_tool_answers_as_the_sandbox_does() -> None:
    assert in_process("print(3142*2718)") == "8539956\n"
    assert in_process("import os").startswith("[tool error")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (make setup installs it)")
def test_quick_run_returns_well_formed_rows() -> None:
    result = run(quick=True)
    json.dumps(result)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    table = normalise("tool_overhead", result)
    step, share = table["rows"]
    assert step["ours"] > 0 and step["reference"] > 0 and step["unit"] == "s/step"
    assert 0 <= share["ours"] < 1
    assert result["params"]["calls_per_completion"] > 0  # the model called the tool: there was something to time
