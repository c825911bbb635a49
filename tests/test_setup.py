"""scripts/setup.sh's install plan (POSTTRAIN_SETUP_DRY_RUN prints it) and the pins in pyproject.toml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def plan(venv: Path, extras: str) -> list[str]:
    env = {**os.environ, "POSTTRAIN_SETUP_DRY_RUN": "1", "VENV": str(venv), "POSTTRAIN_EXTRAS": extras}
    env.pop("POSTTRAIN_TORCH_SPEC", None)
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not Path(p, "nvidia-smi").exists())  # as without a GPU
    out = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return [line.removeprefix("[setup] would run: ") for line in out.stdout.splitlines() if "would run: pip" in line]


def test_cpu_setup_installs_the_cpu_torch_first(tmp_path: Path) -> None:
    assert plan(tmp_path / "venv", "dev") == ["pip install torch==2.13.0", "pip install -e .[dev]"]


def test_vllm_setup_resolves_everything_in_one_pip_call(tmp_path: Path) -> None:
    # Fresh: no torch of ours first (vLLM pins its own CUDA build), one resolve for torch, transformers, TRL, vLLM.
    assert plan(tmp_path / "venv", "dev,vllm") == ["pip install -e .[dev,vllm]"]
    # Over a CPU setup: its CPU torch satisfies vLLM's pin by version only, so it is removed first.
    import torch

    first = ["pip uninstall -y torch"] if torch.version.cuda is None else []
    assert plan(Path(sys.prefix), "dev,vllm") == [*first, "pip install -e .[dev,vllm]"]


def test_vllm_and_trl_are_pinned_together() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    trl = next(d for d in project["dependencies"] if d.startswith("trl"))
    vllm = project["optional-dependencies"]["vllm"]
    assert trl == "trl>=1.16,<1.17"
    assert vllm == ["vllm>=0.22.0,<=0.31.0"]
    # ...which is the range the pinned TRL checks (trl/import_utils.py).
    import importlib.util

    src = Path(importlib.util.find_spec("trl.import_utils").origin).read_text()
    assert re.search(r'Version\("0\.22\.0"\) <= _vllm_base_version <= Version\("0\.31\.0"\)', src)
    assert project["optional-dependencies"]["deepspeed"] == ["deepspeed>=0.19.8,<0.20"]

