"""Every `>>>` example in the packages runs and says what it shows: a docstring's example is a test.

(An equivalent of `pytest --doctest-modules` that imports only the modules that have examples, so that entry points
such as `posttrain/cli/__main__.py` are never run by collection.)
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("posttrain", "rewards", "data_pipelines", "benchmarks")


def _modules_with_examples() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>> " in path.read_text():
                parts = list(path.relative_to(ROOT).with_suffix("").parts)
                out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


MODULES = _modules_with_examples()
#: Modules whose only examples need what a test cannot build in a docstring (a trained model), and so are skipped.
ALL_SKIPPED = {"rewards.reward_model": "needs a trained reward model on disk"}


def test_the_examples_are_found() -> None:
    assert len(MODULES) >= 25 and "rewards.math" in MODULES and "posttrain.core.identity" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_the_modules_examples_run(module: str) -> None:
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(importlib.import_module(module), optionflags=flags)
    if module not in ALL_SKIPPED:
        assert result.attempted > 0, f"{module} has `>>> ` text but no example doctest runs"
    assert result.failed == 0
