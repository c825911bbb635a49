"""scripts/setup.sh's install plan (POSTTRAIN_SETUP_DRY_RUN prints it) and the pins in pyproject.toml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def plan(venv: Path, extras: str, constraints: Path | None = None) -> list[str]:
    env = {**os.environ, "POSTTRAIN_SETUP_DRY_RUN": "1", "VENV": str(venv), "POSTTRAIN_EXTRAS": extras}
    env.pop("POSTTRAIN_TORCH_SPEC", None)
    env.pop("POSTTRAIN_CONSTRAINTS", None)
    if constraints is not None:
        env["POSTTRAIN_CONSTRAINTS"] = str(constraints)
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



GPU_PINS = ROOT / "constraints" / "vllm-0.31.txt"


def pins(path: Path) -> dict[str, str]:
    return dict(line.split("==", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_a_constraints_file_constrains_every_install_and_picks_the_cpu_torch(tmp_path: Path) -> None:
    constraints = tmp_path / "pins.txt"
    constraints.write_text("# a comment\ntorch==2.12.1\ntransformers==5.17.0\n")
    assert plan(tmp_path / "venv", "dev", constraints) == [f"pip install torch==2.12.1 -c {constraints}",
                                                           f"pip install -e .[dev] -c {constraints}"]


def test_the_gpu_pins_are_the_vllm_extras_versions_without_vllm() -> None:
    """constraints/vllm-0.31.txt (`make test-gpu-pins`): the top of the `vllm` extra's range, what it resolves."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins(GPU_PINS)
    assert "vllm" not in pinned and pinned["torch"] == "2.13.0" and pinned["transformers"].startswith("5.17.")
    top = SpecifierSet(project["optional-dependencies"]["vllm"][0].removeprefix("vllm"))
    assert "0.31.0" in top and "0.31.1" not in top  # the file is named for the top of the extra's range
    for dep in project["dependencies"]:  # what posttrain itself asks for admits the pins
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", dep.split(";")[0].split("#")[0].strip()).groups()
        if name.lower() in pinned:
            assert pinned[name.lower()] in SpecifierSet(spec), (name, spec, pinned[name.lower()])


def test_the_constraints_are_written_from_pips_report() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from constraints_from_report import constraints
    finally:
        sys.path.pop(0)
    report = {"install": [
        {"metadata": {"name": "vllm", "version": "0.31.0"}, "requested": True},
        {"metadata": {"name": "trl", "version": "1.16.0"}, "requested": True},
        {"metadata": {"name": "torch", "version": "2.13.0+cu130"}},
        {"metadata": {"name": "Jinja2", "version": "3.1.6"}},
        {"metadata": {"name": "typing_extensions", "version": "4.16.0"}},
    ]}
    lines = [line for line in constraints(report, "here").splitlines() if not line.startswith("#")]
    assert lines == ["jinja2==3.1.6", "torch==2.13.0", "trl==1.16.0", "typing-extensions==4.16.0"]


@pytest.mark.skipif(not os.environ.get("POSTTRAIN_PINS"), reason="only in `make test-gpu-pins` (POSTTRAIN_PINS)")
def test_this_environment_runs_the_pinned_versions() -> None:
    """In the second test environment: every pinned package that is installed has its pinned version."""
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name
    from packaging.version import Version

    pinned = {canonicalize_name(n): Version(v) for n, v in pins(ROOT / os.environ["POSTTRAIN_PINS"]).items()}
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in distributions()}
    wrong = {n: (str(installed[n]), str(v)) for n, v in pinned.items()
             if n in installed and installed[n].public != v.public}
    assert not wrong, f"installed vs pinned: {wrong}"
    assert {"torch", "transformers", "trl", "accelerate", "datasets", "tokenizers"} <= set(installed) & set(pinned)
