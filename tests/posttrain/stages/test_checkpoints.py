"""Trainer checkpoints that always resume (issue #17): a save cut off by SIGKILL, a torn metrics line and a
Ctrl-C during the final save all leave a state the rerun finishes, to the model an uninterrupted run makes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from posttrain.core.models import load_causal_lm
from posttrain.core.run_folder import read_jsonl
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from tests.posttrain.stages.test_sft import recipe, sft_data  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

STEPS, SAVE = 6, 2
#: `posttrain run` with a hook: `when` decides (from the Trainer's step or the save's target) where to stop it.
HOOKED = """\
import os, signal, sys
import transformers
{hook}
from posttrain.cli import main
sys.exit(main(sys.argv[1:]))
"""
#: SIGKILL in the middle of writing checkpoint-4: after the model and optimizer, before the RNG and trainer state.
KILL_IN_CHECKPOINT = """\
original = transformers.Trainer._save_rng_state
def _save_rng_state(self, output_dir):
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)
transformers.Trainer._save_rng_state = _save_rng_state
"""
#: Ctrl-C while the final model is being written (its weights are on disk, its tokenizer not yet).
CTRL_C_IN_FINAL_SAVE = """\
original = transformers.PreTrainedModel.save_pretrained
def save_pretrained(self, save_directory, *args, **kwargs):
    out = original(self, save_directory, *args, **kwargs)
    if os.path.basename(str(save_directory).rstrip("/")) in ("model", "model.tmp"):
        os.kill(os.getpid(), signal.SIGINT)
    return out
transformers.PreTrainedModel.save_pretrained = save_pretrained
"""


def run_cli(python: str, path: Path, hook: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-c", HOOKED.format(hook=hook), "run", str(path)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, sft_data: Path) -> Path:  # noqa: F811
    """The uninterrupted run every interrupted one must match (in this process: no start-up to pay)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    report = run_recipe(parse_recipe(recipe(out, tiny_base, sft_data, steps=STEPS, save=SAVE), kinds=KINDS))
    assert report["stages"]["sft"]["status"] == "done", report
    return out


def same_model(a: Path, b: Path) -> None:
    sa = load_causal_lm(str(a / "sft" / "model")).state_dict()
    sb = load_causal_lm(str(b / "sft" / "model")).state_dict()
    for key in sa:
        assert torch.allclose(sa[key], sb[key], atol=1e-5), key


def logged_steps(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run / "sft" / "metrics.jsonl") if "loss" in r]


def test_a_checkpoint_cut_off_by_sigkill_and_a_torn_metrics_line_do_not_block_resume(
    tmp_path: Path, tiny_base: Path, sft_data: Path, python: str, reference: Path  # noqa: F811
) -> None:
    out, path = tmp_path / "run", tmp_path / "r.yaml"
    path.write_text(recipe(out, tiny_base, sft_data, steps=STEPS, save=SAVE))
    killed = run_cli(python, path, KILL_IN_CHECKPOINT)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (out / "sft" / "checkpoints" / "checkpoint-2").is_dir()
    with open(out / "sft" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # killed mid-line

    proc = run_cli(python, path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "checkpoint-2" in proc.stderr
    assert "its save was cut off" in proc.stderr
    assert logged_steps(out) == logged_steps(reference) == [2, 4, 6]
    same_model(out, reference)


def test_ctrl_c_during_the_final_save_only_saves_on_the_rerun(
    tmp_path: Path, tiny_base: Path, sft_data: Path, python: str, reference: Path  # noqa: F811
) -> None:
    out, path = tmp_path / "run", tmp_path / "r.yaml"
    path.write_text(recipe(out, tiny_base, sft_data, steps=STEPS, save=SAVE))
    stopped = run_cli(python, path, CTRL_C_IN_FINAL_SAVE)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert not (out / "sft" / "model" / "tokenizer.json").exists()

    proc = run_cli(python, path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training finished earlier" in proc.stderr
    assert logged_steps(out) == [2, 4, 6]  # no step 7 of 6
    report = json.loads((out / "report.json").read_text())["stages"]["sft"]
    expected = json.loads((reference / "report.json").read_text())["stages"]["sft"]
    assert report["status"] == "done" and report["metrics"]["steps"] == STEPS
    assert report["metrics"]["train_loss"] == expected["metrics"]["train_loss"]
    assert report["metrics"]["train_seconds"] > 0  # the first run's steps, read back from its last checkpoint
    assert (out / "sft" / "model" / "tokenizer.json").exists()
    same_model(out, reference)
