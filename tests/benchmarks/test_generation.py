"""The generation benchmark: our hf backend vs plain `model.generate`, on the real tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks.generation import QUICK_CASES, VLLM_SIZES, PlainGenerate, TokenCounter, build_model, run
from benchmarks.run import normalise


def test_quick_run_returns_well_formed_rows() -> None:
    import torch

    threads = torch.get_num_threads()
    result = run(quick=True, repeats=1)
    json.dumps(result)
    table = normalise("generation", result)
    *hf_rows, vllm = table["rows"]
    assert [r["name"] for r in hf_rows] == [f"hf backend, {c.name}" for c in QUICK_CASES]
    for row in hf_rows:
        assert row["ours"] > 0 and row["reference"] > 0 and row["unit"] == "tokens/s" and row["higher_is_better"]
        assert row["ratio"] == pytest.approx(row["ours"] / row["reference"])
        assert "1 thread" in row["note"]
    for case in QUICK_CASES:
        measured = result["details"][case.name]
        assert measured["shape_ok"] and measured["same_token_count"]
        # Every completion runs to max_new_tokens (end-of-sequence off): the count is exact.
        expected = case.prompts * case.n * case.max_new_tokens
        assert measured["ours"]["tokens"] == measured["reference"]["tokens"] == expected
    assert result["details"]["greedy eval"]["greedy_outputs_match"] is True
    if importlib.util.find_spec("vllm") is None:
        assert vllm["ours"] is None and vllm["ratio"] is None and "skipped: vLLM is not installed" in vllm["note"]
    assert torch.get_num_threads() == threads  # the one-thread setting does not leak


def test_token_counter_counts_new_positions_and_unwraps(tmp_path: Path) -> None:
    path = build_model(tmp_path / "model")
    plain = PlainGenerate(path)
    assert plain.model.generation_config.eos_token_id is None  # completions cannot stop early
    counter = TokenCounter(plain.model)
    case = QUICK_CASES[0]
    out = plain.generate(["Compute 1+2.", "Compute 345+67."], case, seed=0)
    assert [len(row) for row in out] == [case.n, case.n]
    assert counter.tokens == 2 * case.n * case.max_new_tokens
    counter.close()
    assert "generate" not in vars(plain.model)  # the model's own generate again


def test_the_vllm_rows_model_is_one_vllm_builds(tmp_path: Path) -> None:
    from posttrain.core.vllm_limits import mla_problem

    path = build_model(tmp_path / "model", overrides=VLLM_SIZES)
    config = json.loads((path / "config.json").read_text())
    assert mla_problem(config) is None
    assert mla_problem(json.loads((build_model(tmp_path / "plain") / "config.json").read_text())) is not None
