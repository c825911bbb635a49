from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

from posttrain.cli import main

RECIPE = """\
output_dir: {out}
model: {{name_or_path: /models/base}}
stages:
  - name: sft
    kind: sft
    data: data.jsonl
  - name: grpo
    kind: grpo
    model: sft
    data: prompts.jsonl
    rewards: [{{name: math}}]
    rollout: {{backend: vllm, mode: server, server_host: 10.0.0.7, server_port: 8123}}
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run"))
    return path


def test_serves_the_model_the_grpo_stage_starts_from(recipe: Path, tmp_path: Path, capsys) -> None:
    model = tmp_path / "run" / "sft" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert main(["rollout-server", str(recipe), "--dry-run", "--vllm-args", "--max-model-len 512"]) == 0
    env, *cmd = shlex.split(capsys.readouterr().out)
    assert env == "VLLM_SERVER_DEV_MODE=1"  # the weight-update endpoints TRL's client calls
    assert cmd[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", str(model)]  # vLLM's own server
    opts = dict(zip(cmd[5::2], cmd[6::2], strict=False))
    assert (opts["--host"], opts["--port"]) == ("10.0.0.7", "8123")  # where the stage's trainer looks
    assert opts["--max-model-len"] == "512"


def test_the_command_is_the_one_trl_builds_for_its_client(recipe: Path, tmp_path: Path, capsys) -> None:
    """TRL 1.16 deprecated `trl vllm-serve` (it only runs `vllm serve` now): ours is TRL's command, flags included."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    model = tmp_path / "run" / "sft" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert main(["rollout-server", str(recipe), "--dry-run", "--tensor-parallel-size", "2"]) == 0
    cmd = shlex.split(capsys.readouterr().out)[1:]
    assert cmd == build_command(ScriptArguments(model=str(model), host="10.0.0.7", port=8123, tensor_parallel_size=2,
                                                gpu_memory_utilization=0.9))
    joined = " ".join(cmd)
    assert '--weight-transfer-config {"backend": "nccl"}' in joined
    assert "--logprobs-mode processed_logprobs" in joined  # what the importance-sampling correction needs


def test_a_missing_starting_model_names_the_stage_to_run_first(recipe: Path, capsys) -> None:
    assert main(["rollout-server", str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "stage 'sft'" in err and "--stages sft" in err


def test_a_recipe_without_grpo_is_a_clear_error(tmp_path: Path, capsys) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(out=tmp_path).split("  - name: grpo")[0])
    assert main(["rollout-server", str(path), "--dry-run"]) == 2
    assert "no grpo stage" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed: it would start")
def test_without_vllm_it_says_how_to_get_it(capsys) -> None:
    assert main(["rollout-server", "--model", "/models/x"]) == 2
    assert "pip install 'posttrain[vllm]'" in capsys.readouterr().err


def test_a_trusting_recipe_lets_vllm_load_the_checkpoints_own_tokenizer(recipe: Path, tmp_path: Path, capsys) -> None:
    model = tmp_path / "run" / "sft" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert main(["rollout-server", str(recipe), "--dry-run"]) == 0
    assert "--trust-remote-code" not in capsys.readouterr().out
    recipe.write_text(recipe.read_text().replace("/models/base}", "/models/base, trust_remote_code: true}"))
    assert main(["rollout-server", str(recipe), "--dry-run"]) == 0
    assert "--trust-remote-code" in shlex.split(capsys.readouterr().out)


def test_a_stage_with_speculative_rollouts_gets_a_server_that_drafts_with_its_mtp_module(
    recipe: Path, tmp_path: Path, capsys
) -> None:
    import json

    model = tmp_path / "run" / "sft" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    recipe.write_text(recipe.read_text().replace("server_port: 8123}", "server_port: 8123,\n"
                                                 "              speculative: {mtp: true, num_tokens: 2}}"))
    assert main(["rollout-server", str(recipe), "--dry-run"]) == 0
    cmd = shlex.split(capsys.readouterr().out)
    config = cmd[cmd.index("--speculative-config") + 1]
    assert json.loads(config) == {"method": "mtp", "num_speculative_tokens": 2}
    # The user's own choice wins.
    assert main(["rollout-server", str(recipe), "--dry-run", "--vllm-args",
                 "--speculative-config '{\"method\": \"ngram\"}'"]) == 0
    cmd = shlex.split(capsys.readouterr().out)
    assert cmd.count("--speculative-config") == 1 and "ngram" in cmd[cmd.index("--speculative-config") + 1]
