"""Every stage on every common family: a user's checkpoint folder named in `model.name_or_path`.

One small recipe per family runs distill (the `hf` teacher is the family's own model), SFT, reward model,
GRPO (math, format and the trained reward model as rewards) and eval, two steps each on a handful of rows,
in process. Formats alternate between stages: every family sees plain-text and conversational data, and
every stage sees both across the families; half the families train SFT with LoRA, the others the reward
model. The MoE checkpoints carry `output_router_logits: true` (what TRL's SFTTrainer saved), the config
that crashed generation; the thinking families' templates open `<think>` in the prompt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from tests.families import FAMILIES

PLUGINS = "tests.posttrain.plugins.family_rewards"
STAGES = ("distill", "sft", "reward_model", "grpo", "eval")


@dataclass(frozen=True)
class Plan:
    """Data format per stage (`text` or `chat`) and which trainer stage uses LoRA."""

    sft: str
    reward_model: str
    grpo: str
    eval: str
    distill: str
    lora: str  # "sft" or "reward_model"


PLANS: dict[str, Plan] = {
    "llama": Plan("text", "chat", "chat", "text", "chat", lora="reward_model"),
    "qwen2": Plan("chat", "text", "text", "chat", "text", lora="sft"),
    "qwen3": Plan("text", "chat", "chat", "chat", "chat", lora="sft"),
    "gemma": Plan("chat", "text", "text", "text", "chat", lora="reward_model"),
    "qwen2_moe": Plan("text", "chat", "chat", "text", "chat", lora="sft"),
    "qwen3_moe": Plan("chat", "text", "chat", "chat", "text", lora="reward_model"),
    "mixtral": Plan("text", "chat", "text", "chat", "chat", lora="sft"),
    "olmoe": Plan("chat", "text", "chat", "text", "text", lora="reward_model"),
    "deepseek_v2": Plan("text", "chat", "text", "chat", "chat", lora="reward_model"),
    "deepseek_v3": Plan("chat", "text", "chat", "chat", "text", lora="sft"),
}


def test_the_plans_cover_both_formats_for_every_family_and_every_stage() -> None:
    assert set(PLANS) == set(FAMILIES)
    for plan in PLANS.values():
        assert {getattr(plan, s) for s in STAGES} == {"text", "chat"}
    for stage in STAGES:
        assert {getattr(p, stage) for p in PLANS.values()} == {"text", "chat"}
    assert {p.lora for p in PLANS.values()} == {"sft", "reward_model"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny files in both formats: SFT rows, preference pairs, GRPO/eval/distill prompts with `solution`."""
    from data_pipelines.tasks.arithmetic import eval_prompts, solution_text, train_prompts

    root = tmp_path_factory.mktemp("family_data")
    train, held_out = train_prompts(8, seed=3), eval_prompts(2, seed=3)

    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    def assistant(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    def wrong(r: dict) -> str:
        return solution_text(r["a"], r["b"]).replace(str(r["a"] + r["b"]), str(r["a"] + r["b"] + 1))

    rows = {
        "sft_text": [{"prompt": r["prompt"], "completion": solution_text(r["a"], r["b"])} for r in train],
        "sft_chat": [{"messages": user(r["prompt"]) + assistant(solution_text(r["a"], r["b"]))} for r in train],
        "pairs_text": [{"prompt": r["prompt"], "chosen": solution_text(r["a"], r["b"]), "rejected": wrong(r)}
                       for r in train],
        "pairs_chat": [{"prompt": user(r["prompt"]), "chosen": assistant(solution_text(r["a"], r["b"])),
                        "rejected": assistant(wrong(r))} for r in train],
        "prompts_text": [{"id": r["id"], "prompt": r["prompt"], "solution": r["solution"]} for r in train],
        "prompts_chat": [{"id": r["id"], "prompt": user(r["prompt"]), "solution": r["solution"]} for r in train],
        "eval_text": [{"id": r["id"], "prompt": r["prompt"], "solution": r["solution"]} for r in held_out],
        "eval_chat": [{"id": r["id"], "prompt": user(r["prompt"]), "solution": r["solution"]} for r in held_out],
    }
    paths = {}
    for name, items in rows.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in items))
    return paths


def family_recipe(out: Path, base: Path, plan: Plan, data: dict[str, Path]) -> str:
    lora = "    lora: {r: 4, alpha: 8}\n"
    sft_lora, rm_lora = (lora, "") if plan.lora == "sft" else ("", lora)
    return f"""\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  - name: distill
    kind: distill
    source: {{path: {data['prompts_text']}, limit: 3}}
    teacher: {{backend: hf, model: base, chat: {str(plan.distill == 'chat').lower()}, batch_size: 8}}
    format: {plan.distill}
    n: 2
    sampling: {{temperature: 1.0, max_new_tokens: 10}}
    rewards: [{{name: '{PLUGINS}:always'}}]
    filters: {{format: false, max_mixed: null, exact_duplicates: false, near_duplicates: null}}
    decontamination: null
  - name: sft
    kind: sft
    data: {data['sft_' + plan.sft]}
    moe_balance: {{bias_update_speed: 0.001}}
{sft_lora}    trl: {{max_steps: 2, per_device_train_batch_size: 4, learning_rate: 1.0e-3, logging_steps: 1,
           max_length: 64}}
  - name: reward_model
    kind: reward_model
    model: sft
    data: {data['pairs_' + plan.reward_model]}
    eval_fraction: 0.25
{rm_lora}    trl: {{max_steps: 2, per_device_train_batch_size: 4, logging_steps: 1, eval_steps: 2, max_length: 64}}
  - name: grpo
    kind: grpo
    model: sft
    data: {data['prompts_' + plan.grpo]}
    rewards:
      - {{name: math}}
      - {{name: format}}
      - {{name: reward_model, weight: 0.1, kwargs: {{model: reward_model, normalize: sigmoid}}}}
      - {{name: '{PLUGINS}:opens_think', weight: 0.0}}
    trl: {{max_steps: 2, per_device_train_batch_size: 4, num_generations: 2, max_completion_length: 10,
           learning_rate: 1.0e-3, logging_steps: 1}}
  - name: eval
    kind: eval
    model: grpo
    data: {data['eval_' + plan.eval]}
    samples: 2
    sampling: {{temperature: 1.0, max_new_tokens: 10}}
"""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def report_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """report.json as usual, but report.md and its plots only when the test asks (the plots are seconds per
    family; the report has its own tests)."""
    import posttrain.run.runner

    monkeypatch.setattr(posttrain.run.runner, "_write_report",
                        lambda run_dir, recipe, report, plots=True: report.write(run_dir, recipe.stage_names()))


class Records(logging.Handler):
    """The records of one logger, whatever the `posttrain` logger's propagation."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def balance_log() -> Iterator[list[logging.LogRecord]]:
    handler, logger = Records(), logging.getLogger("posttrain.training.moe_balance")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_stage_runs_on_the_family(name: str, tmp_path: Path, family_base: Callable[[str], Path],
                                        data: dict[str, Path], report_at_the_end: None,
                                        balance_log: list[logging.LogRecord]) -> None:
    from safetensors import safe_open

    from posttrain.report import write_report

    family, plan = FAMILIES[name], PLANS[name]
    base = family_base(name)
    report = run_recipe(parse_recipe(family_recipe(tmp_path, base, plan, data), kinds=KINDS))
    stages = report["stages"]
    assert {s: stages[s]["status"] for s in STAGES} == dict.fromkeys(STAGES, "done"), \
        {s: stages[s]["metrics"].get("error") for s in STAGES}
    assert stages["distill"]["metrics"]["kept"] == 3
    assert stages["sft"]["metrics"]["steps"] == 2 and stages["grpo"]["metrics"]["steps"] == 2
    assert 0 <= stages["reward_model"]["metrics"]["pairwise_accuracy"] <= 1
    assert stages["eval"]["metrics"]["prompts"] == 2 and "pass@1" in stages["eval"]["metrics"]

    # Saved models never carry the router-logits switch that crashes generation.
    for stage in ("sft", "reward_model", "grpo"):
        config = json.loads((tmp_path / stage / "model" / "config.json").read_text())
        assert not config.get("output_router_logits", False), stage
    assert (tmp_path / plan.lora / "adapter" / "adapter_config.json").exists()  # trained with LoRA, saved merged
    with safe_open(str(tmp_path / plan.lora / "model" / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())  # noqa: SIM118 (safe_open has no __iter__)

    # The SFT stage asked for the bias update: DeepSeek-V3 has the bias; the other MoEs say what balances instead.
    said = [(r.levelno, r.getMessage()) for r in balance_log if "bias_update_speed" in r.getMessage()]
    model_class = json.loads((base / "config.json").read_text())["architectures"][0]
    own_aux = json.loads((base / "config.json").read_text()).get("router_aux_loss_coef")
    if family.moe and name != "deepseek_v3":
        assert said and said[0][0] == logging.WARNING and model_class in said[0][1], said
        assert ("its own auxiliary load-balancing loss" in said[0][1]) == bool(own_aux), said
    else:
        assert not any(level >= logging.WARNING for level, _ in said), said

    # Expert loads for every MoE family, per layer, from SFT and GRPO alike.
    for stage in ("sft", "grpo"):
        rows = [r for r in read_jsonl(tmp_path / stage / "metrics.jsonl") if "loss" in r]
        if family.moe:
            assert isinstance(rows[-1]["moe/max_violation"], float), stage
            loads = [k for k in rows[-1] if k.startswith("moe/load/layer_")]
            assert loads and all(sum(rows[-1][k]) == pytest.approx(1, abs=1e-3) for k in loads)
            # The family's own auxiliary loss is on in training (router logits in training forwards only).
            assert ("aux_loss" in rows[-1]) == bool(own_aux), stage
        else:
            assert "moe/max_violation" not in rows[-1]
    if family.moe:  # the report draws MaxVio and the expert-load heat map from them
        write_report(tmp_path, kinds=KINDS)
        assert (tmp_path / "plots" / "sft_expert_load.png").exists()
        assert (tmp_path / "plots" / "grpo_expert_load.png").exists()

    # The template's `<think>` opener reaches the rewards, the eval samples and the distilled rows.
    grpo_rows = [r for r in read_jsonl(tmp_path / "grpo" / "metrics.jsonl") if "rewards/opens_think/mean" in r]
    if family.thinking and plan.grpo == "chat":
        assert [r["rewards/opens_think/mean"] for r in grpo_rows] == [1.0, 1.0]
    samples = read_jsonl(tmp_path / "eval" / "samples.jsonl")
    if family.thinking and plan.eval == "chat":
        assert all(s["greedy"].startswith("<think>\n") for s in samples)
        assert all(c.startswith("<think>\n") for s in samples for c in s["samples"])
    distilled = read_jsonl(tmp_path / "distill" / "data.jsonl")
    if family.thinking and plan.distill == "chat":
        assert all(r["completion"][-1]["content"].startswith("<think>\n") for r in distilled)
