"""Every command the README and docs/ show for the tiny model runs as written, offline.

The commands are read from the pages' ```bash blocks. They run in a folder laid out as after `make setup` and
`make demo` (`.venv/bin/posttrain`, `recipes/`, a finished `runs/tiny-r1/`, here the `--quick` run's folder), with
local data where the hub would be: GSM8K rows in the `datasets` cache, as `load_dataset("openai/gsm8k")` leaves
them. `posttrain run` commands other than the quick run itself are full runs of minutes to hours: they are checked
with `posttrain validate` and the very same arguments, which takes every option of run. Commands on hub models or
GPU recipes are not run here (no network, no GPU).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TINY = re.compile(r"recipes/tiny-[\w-]+\.yaml|runs/tiny-r1\b")
QUICK_RUN = ".venv/bin/posttrain run recipes/tiny-r1.yaml --quick"


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for each `.venv/bin/posttrain ...` line of a bash block, continuations joined, comments cut."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL):
            for command in re.sub(r"\\\n\s*", " ", block).splitlines():
                command = re.sub(r"\s+#.*$", "", command).strip()
                if command.startswith(".venv/bin/posttrain "):
                    out.append((page.name, command))
    return out


#: The tiny model's commands, each once (the README and a docs page may show the same one).
COMMANDS = list({c: (page, c) for page, c in reversed(shown_commands()) if TINY.search(c) or " rewards " in c}
                .values())[::-1]


def test_the_pages_show_the_tiny_commands() -> None:
    verbs = {shlex.split(c)[1] for _, c in COMMANDS}
    assert {"run", "validate", "eval", "report", "rewards"} <= verbs, verbs
    assert any(c == QUICK_RUN for _, c in COMMANDS)


def _gsm8k_cache(home: Path) -> None:
    """`openai/gsm8k` (main) in the `datasets` cache under `home`, built from local rows in its shape."""
    import datasets

    from data_pipelines.tasks.arithmetic import eval_prompts

    rows = [{"question": r["prompt"], "answer": f"{r['a']} + {r['b']}\n#### {r['solution']}"}
            for r in eval_prompts(20, seed=1)]
    build = home / "build"
    build.mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(build / "test.parquet"))
    datasets.load_dataset("parquet", data_files={"test": str(build / "test.parquet")}, cache_dir=str(build / "c"))
    built = next(p for p in (build / "c").glob("parquet/*/0.0.0/*") if p.is_dir())
    cache = home / "datasets" / "openai___gsm8k" / "main" / "0.0.0" / built.name
    cache.mkdir(parents=True)
    for arrow in built.glob("*.arrow"):
        shutil.copy(arrow, cache / arrow.name.replace("parquet-", "gsm8k-"))
    info = json.loads((built / "dataset_info.json").read_text())
    (cache / "dataset_info.json").write_text(json.dumps({**info, "builder_name": "gsm8k", "dataset_name": "gsm8k",
                                                         "config_name": "main"}))


@pytest.fixture(scope="module")
def work(quick_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    shutil.copytree(quick_demo / "runs" / "tiny-r1-quick", quick_demo / "runs" / "tiny-r1", dirs_exist_ok=True)
    (quick_demo / "completions.jsonl").write_text(json.dumps(
        {"prompt": "Compute 2+2.", "completion": "<think>2+2=4</think> \\boxed{4}", "solution": "4"}) + "\n")
    _gsm8k_cache(quick_demo / "hf")
    return quick_demo


@pytest.mark.slow
@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[c[len(".venv/bin/posttrain "):][:60] for _, c in COMMANDS])
def test_the_command_runs_as_written(work: Path, page: str, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from posttrain.cli.eval import default_output_dir

    argv = shlex.split(command)
    if argv[1] == "run" and command != QUICK_RUN:
        argv[1] = "validate"  # the same arguments, checked: a full run is what `make demo` times
    proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, f"{page}: {command}\n{proc.stderr[-3000:]}"
    if argv[1] == "eval":
        monkeypatch.chdir(work)
        report = json.loads((Path(default_output_dir(argv[2])) / "report.json").read_text())
        assert all(e["status"] in ("done", "skipped") for e in report["stages"].values())
        assert all(0 <= e["metrics"]["accuracy"] <= 1 for e in report["stages"].values())
