"""The curves of any stage that logs metrics.jsonl: MaxVio per layer against the run without balancing, and
the expert-load heat map."""

from __future__ import annotations

from tests.posttrain.conftest import BuiltReport
from tests.posttrain.report.fake_run import EXPERTS, MOE_LAYERS, SFT_STEPS, png_info


def test_maxvio_and_expert_load_beside_the_run_without_balancing(full_report: BuiltReport) -> None:
    run = full_report.run
    maxvio = png_info(run / "plots" / "sft_maxvio.png")["data"]["series"]
    assert maxvio["sft (γ = 0.001)"] == len(SFT_STEPS) and maxvio["γ = 0 (no balancing)"] == len(SFT_STEPS)
    assert {f"layer_{layer}" for layer in MOE_LAYERS} <= set(maxvio)
    heat = png_info(run / "plots" / "sft_expert_load.png")["data"]
    assert heat["shape"] == [[len(MOE_LAYERS), EXPERTS], [len(MOE_LAYERS), EXPERTS]]
    assert heat["panels"] == ["sft (γ = 0.001)", "γ = 0 (no balancing)"]
