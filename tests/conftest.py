from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    from posttrain.core.tiny import build_tiny_model, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_base")
    tok = train_tokenizer(corpus(), 512)
    model = build_tiny_model(tok, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def family_base(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`family_base("qwen3_moe")`: a tiny random-weight checkpoint of that family (tests/families.py) with a
    chat-template tokenizer, built on first use (well under a second) and shared by the whole session.

    MoE checkpoints are saved with `output_router_logits: true`, as TRL's SFTTrainer saved every MoE it trained:
    the config that crashed generation on Qwen2/3-MoE, Mixtral and OLMoE.
    """
    from tests.families import FAMILIES, build_checkpoint, train_chat_tokenizer

    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}
    tokenizer: list[Any] = []

    def get(name: str) -> Path:
        if name not in built:
            if not tokenizer:
                tokenizer.append(train_chat_tokenizer())
            built[name] = build_checkpoint(FAMILIES[name], tokenizer[0], root / name,
                                           router_logits=FAMILIES[name].moe)
        return built[name]

    return get


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder where the README's `posttrain run recipes/tiny-r1.yaml --quick` ran, as a user types it
    after `make setup` (`.venv/bin/posttrain`, the repository's `recipes/`): the run is in `runs/tiny-r1-quick/`.
    Shared by the tests of the default recipe and of the commands the docs show."""
    import subprocess

    work = tmp_path_factory.mktemp("demo")
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "posttrain").symlink_to(Path(sys.executable).with_name("posttrain"))
    (work / "recipes").symlink_to(ROOT / "recipes")
    proc = subprocess.run([".venv/bin/posttrain", "run", "recipes/tiny-r1.yaml", "--quick"], cwd=work,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work
