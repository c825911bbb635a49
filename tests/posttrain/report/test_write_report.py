"""The run report as a whole: its order, its plots, rebuilding it, and which section each stage kind gets.

Each kind's own section is tested beside it (tests/posttrain/report/sections/, or with its stage); the run folders
are written here the way the stages write them (fake_run.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from posttrain.core.errors import PosttrainError
from posttrain.report import write_report
from posttrain.stages import KINDS, StageKinds
from tests.mini_recipes import distill_only
from tests.posttrain.conftest import BuiltReport
from tests.posttrain.report.fake_run import make_run, png_info, sections, stage_sections, write_jsonl


def test_full_run_report(full_report: BuiltReport) -> None:
    run, md = full_report.run, full_report.md

    # It opens with the accuracy-by-stage plot.
    body = [line for line in md.splitlines() if line.strip()]
    assert body[0].startswith("# ")
    assert body[1] == "![Accuracy by stage](plots/accuracy_by_stage.png)"

    # One section per stage, in recipe order.
    heads = [h for h in sections(md) if h[0].isdigit()]
    assert heads == ["1. distill (`distill`)", "2. eval_base (`eval`)", "3. sft (`sft`)", "4. eval_sft (`eval`)",
                     "5. reward_model (`reward_model`)", "6. grpo (`grpo`)", "7. eval_grpo (`eval`)"]

    # Every referenced PNG exists, is a valid image, and shows what the data holds.
    plots = {p.name for p in (run / "plots").glob("*.png")}
    referenced = {line.split("(plots/")[1].rstrip(")") for line in md.splitlines() if "](plots/" in line}
    assert referenced == plots
    assert {"accuracy_by_stage.png", "distill_distill.png", "sft_loss.png", "sft_maxvio.png", "sft_expert_load.png",
            "reward_model_loss.png", "reward_model_accuracy.png",
            "grpo_rewards.png", "grpo_dynamics.png", "grpo_loss.png", "grpo_maxvio.png",
            "grpo_expert_load.png", "maxvio_comparison.png"} == plots
    for name in plots:
        info = png_info(run / "plots" / name)
        assert info["size"][0] >= 500 and info["size"][1] >= 300, name


def test_rebuild_drops_plots_whose_data_is_gone(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_report(run, kinds=KINDS)
    assert (run / "plots" / "grpo_rewards.png").exists()
    (run / "grpo" / "metrics.jsonl").unlink()
    md = write_report(run, kinds=KINDS).read_text()
    assert not (run / "plots" / "grpo_rewards.png").exists()
    assert "No curves: no metrics.jsonl" in sections(md)["6. grpo (`grpo`)"]


def test_stages_not_yet_run_still_get_a_section(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    stages = [{"name": "distill", "kind": "distill"}, {"name": "sft", "kind": "sft"}]
    (run / "resolved_recipe.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (run / "report.json").write_text(json.dumps({"stages": {
        "distill": {"kind": "distill", "status": "failed", "seconds": 0.5, "metrics": {"error": "boom"}}}}))
    md = write_report(run, kinds=KINDS).read_text()
    assert "## 2. sft (`sft`)" in md
    assert "Status: not run" in sections(md)["2. sft (`sft`)"]


def test_no_report_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PosttrainError, match="run `posttrain run` first"):
        write_report(tmp_path, kinds=KINDS)


def test_cli_rebuilds_the_report(tmp_path: Path, python: str) -> None:
    run = make_run(tmp_path)
    proc = subprocess.run([python, "-m", "posttrain.cli", "report", str(run)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(run / "report.md") in proc.stdout
    assert (run / "plots" / "accuracy_by_stage.png").exists()

    proc = subprocess.run([python, "-m", "posttrain.cli", "report", str(tmp_path / "empty")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert "no readable report.json" in proc.stderr and "Traceback" not in proc.stderr


def test_drawing_a_report_imports_neither_torch_nor_a_trainer(tmp_path: Path, python: str) -> None:
    """`posttrain report` is a view of files: on a machine (or in a notebook) without a GPU stack it must not pay for
    torch, transformers or TRL, nor import the stage kinds that need them."""
    run = make_run(tmp_path)
    code = ("import sys; from posttrain.cli.main import main; main(['report', sys.argv[1]]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'trl') "
            "or m.startswith('posttrain.stages.') or m.startswith('posttrain.training')))")
    proc = subprocess.run([python, "-c", code, str(run)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "## 6. grpo (`grpo`)" in (run / "report.md").read_text()


def test_report_of_a_real_run(tmp_path: Path, python: str) -> None:
    """`posttrain run` writes the report from what the real distill stage logged."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(distill_only(tmp_path / "run", prompts=40, samples=4))
    proc = subprocess.run([python, "-m", "posttrain.cli", "run", str(recipe)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    stats = json.loads((run / "distill" / "stats.json").read_text())
    sec = sections((run / "report.md").read_text())["1. distill (`distill`)"]
    assert f"**acceptance rate: {100 * stats['kept'] / stats['generated']:.1f} %**" in sec
    for reason, count in stats["rejected"].items():
        assert f"| {reason} | {count} |" in sec
    drawn = png_info(run / "plots" / "distill_distill.png")["data"]
    in_order = [(f"{k}/4", stats["pass_rate_histogram"][f"{k}/4"]) for k in range(5)
                if f"{k}/4" in stats["pass_rate_histogram"]]
    assert list(drawn["histogram"].items()) == in_order


# --------------------------------------------------------------------------------------------------
# Which section a kind gets


def _plugin_run(root: Path, kind: str, metrics: dict[str, object] | None = None) -> Path:
    """A run of one stage `tally` of `kind` that wrote a loss curve to metrics.jsonl."""
    run = root / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"stages": {
        "tally": {"kind": kind, "status": "done", "seconds": 1.0, "metrics": metrics or {"rows": 3}}}}))
    write_jsonl(run / "tally" / "metrics.jsonl", [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)])
    return run


def test_a_plugin_kind_with_report_hooks_gets_its_own_section(tmp_path: Path) -> None:
    run = _plugin_run(tmp_path, "reporting")
    kinds = StageKinds({"reporting": "tests.posttrain.plugins.reporting_stage"})
    md = write_report(run, kinds=kinds).read_text()
    sec = stage_sections(md)["tally"]
    assert "Counted to 3, one row at a time." in sec
    assert "- **rows: 3**" in sec
    assert "![tally: rows](plots/tally_rows.png)" in sec
    assert png_info(run / "plots" / "tally_rows.png")["data"] == {"rows": 3}
    assert "a plugin" not in sec and "tally_loss.png" not in sec  # its own section, not the generic one
    assert "| rows | 3 |" in sec  # every kind's section ends with its metrics


def test_a_kind_without_report_hooks_gets_the_generic_section(tmp_path: Path) -> None:
    run = _plugin_run(tmp_path, "counting")  # registered in tests/conftest.py; its module has no hooks
    md = write_report(run, kinds=KINDS).read_text()
    sec = stage_sections(md)["tally"]
    assert "A stage of kind `counting` (a plugin): its metrics are listed as reported." in sec
    assert "![tally: loss](plots/tally_loss.png)" in sec  # what it logged is drawn
    assert png_info(run / "plots" / "tally_loss.png")["data"] == {"series": {"training loss": 3}}
    assert "| rows | 3 |" in sec


def test_a_kind_whose_module_cannot_be_imported_gets_the_generic_section(tmp_path: Path) -> None:
    run = _plugin_run(tmp_path, "gone")
    md = write_report(run, kinds=StageKinds({"gone": "tests.posttrain.plugins.no_such_module"})).read_text()
    sec = stage_sections(md)["tally"]
    assert "A stage of kind `gone` (a plugin)" in sec
    assert "The section of kind `gone` is unavailable (ModuleNotFoundError" in sec
    assert "| rows | 3 |" in sec


def test_a_report_hook_that_raises_costs_its_section_only(tmp_path: Path) -> None:
    run = _plugin_run(tmp_path, "reporting", {"rows": "many"})  # the plugin's figures expect a number
    md = write_report(run, kinds=StageKinds({"reporting": "tests.posttrain.plugins.reporting_stage"})).read_text()
    assert "_Could not build the section of stage 'tally': TypeError" in stage_sections(md)["tally"]
    assert "## Stages" in md
