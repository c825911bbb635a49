"""The MTP benchmark: rollouts and a GRPO step with and without drafting, on a real tiny MTP model."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.mtp import QUICK_CASES, run, trained_model
from benchmarks.run import normalise


def test_quick_run_returns_well_formed_rows(mtp_base: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    result = run(quick=True, model=str(mtp_base), repeats=1)
    json.dumps(result)
    rows = normalise("mtp", result)["rows"]
    names = [r["name"] for r in rows]
    for case in QUICK_CASES:
        speed = rows[names.index(f"MTP drafting, {case.name}")]
        assert speed["ours"] > 0 and speed["reference"] > 0 and speed["unit"] == "tokens/s"
        assert 0 <= rows[names.index(f"MTP draft acceptance, {case.name}")]["ours"] <= 1
        detail = result["details"][case.name]
        assert detail["ours"]["tokens"] > 0 and detail["generate"]["tokens"] > 0
    assert result["details"]["greedy eval"]["greedy_outputs_match"] is True
    grpo = rows[names.index("MTP drafting, GRPO step")]
    assert grpo["ours"] > 0 and grpo["reference"] > 0 and grpo["unit"] == "s/step"
    assert "acceptance" in result["details"]["GRPO step"]["logged"]["speculative"]
    assert torch.get_num_threads() == threads


def test_a_given_model_is_used_as_is(tmp_path: Path) -> None:
    assert trained_model(quick=True, model=str(tmp_path)) == tmp_path
