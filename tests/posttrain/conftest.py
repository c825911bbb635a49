from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class BuiltReport:
    """A run folder and the report.md built from it."""

    run: Path
    md: str


@pytest.fixture(scope="session")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> BuiltReport:
    """The report of the fake tiny-r1 run (tests/posttrain/report/fake_run.py), built once: read it, never change it.

    Each kind's section is tested beside its stage's tests, the document as a whole in tests/posttrain/report.
    """
    from posttrain.report import write_report
    from posttrain.stages import KINDS
    from tests.posttrain.report.fake_run import make_run

    run = make_run(tmp_path_factory.mktemp("full_report"))
    return BuiltReport(run, write_report(run, kinds=KINDS).read_text())
