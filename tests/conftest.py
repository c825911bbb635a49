from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from posttrain.stages import register_stage_kind

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
#: A test-only stage kind: numbered rows written one at a time, resumable (tests/posttrain/plugins).
register_stage_kind("counting", "tests.posttrain.plugins.counting_stage")


@pytest.fixture(scope="session")
def python() -> str:
    """The venv's interpreter (never the slow pyenv shim)."""
    return sys.executable


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepSeek-V3 + tokenizer saved with save_pretrained, shared by the whole session."""
    from data_pipelines.tasks.arithmetic import corpus
    from posttrain.tiny import build_tiny_model, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_base")
    tok = train_tokenizer(corpus(), 512)
    model = build_tiny_model(tok, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
