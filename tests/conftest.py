from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from posttrain.core.threads import passive_wait

passive_wait()  # as every `posttrain` command does, before torch is imported (core/threads.py)

from posttrain.stages import register_stage_kind  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
#: A test-only stage kind: numbered rows written one at a time, resumable (tests/posttrain/plugins).
register_stage_kind("counting", "tests.posttrain.plugins.counting_stage")


#: Tests that must share one pytest-xdist worker (`make test` runs two): the sandbox's (its resource tests time
#: fork bombs and floods, and assume no other test of theirs loads the machine beside them; uids are per process,
#: `rewards/sandbox/uids.py`), and those of the session's quick demo run (built once, in that worker).
XDIST_GROUPS = {"sandbox": ("tests/rewards/sandbox/", "tests/rewards/test_code", "tests/benchmarks/test_sandbox.py"),
                "quick_demo": ("tests/recipes/test_tiny_r1.py", "tests/benchmarks/test_grpo_step.py",
                               "tests/test_doc_commands.py")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        path = Path(str(item.path)).relative_to(ROOT).as_posix()
        group = next((g for g, prefixes in XDIST_GROUPS.items() if path.startswith(prefixes)), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


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
def mtp_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DeepSeek-V3 with one MTP depth, saved as a run saves it, shared by the whole session."""
    from data_pipelines.tasks.arithmetic import corpus
    from posttrain.core.tiny import build_tiny_model, train_tokenizer

    out = tmp_path_factory.mktemp("mtp_base")
    tok = train_tokenizer(corpus(), 512)
    build_tiny_model(tok, {"num_nextn_predict_layers": 1}, seed=0).save_pretrained(out)
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
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepSeek-V3 trained to call the python tool (tests/tool_model.py), built once per session."""
    from tests.tool_model import build_tool_model

    return build_tool_model(tmp_path_factory.mktemp("tool_model"))


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder where the README's `posttrain run recipes/tiny-r1.yaml --quick` ran, as a user types it
    after `make setup` (`.venv/bin/posttrain`, the repository's `recipes/`): the run is in `runs/tiny-r1-quick/`.
    Shared by the tests of the default recipe and of the commands the docs show."""

    work = tmp_path_factory.mktemp("demo")
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "posttrain").symlink_to(Path(sys.executable).with_name("posttrain"))
    (work / "recipes").symlink_to(ROOT / "recipes")
    proc = subprocess.run([".venv/bin/posttrain", "run", "recipes/tiny-r1.yaml", "--quick"], cwd=work,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work
