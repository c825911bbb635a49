"""Loading users' checkpoints: no router loss in generation, a reward-model head for every family; a checkpoint
that ships its own code: the tokenizer honours trust_remote_code everywhere, the model prefers transformers'
built-in architecture (with a WARNING), and saved stage models point to no code they lack."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from data_pipelines.tasks.arithmetic import eval_prompts, solution_text, train_prompts
from posttrain.core.generation import GenerationSpec, HFGenerator, SamplingParams
from posttrain.core.models import load_causal_lm, load_tokenizer, with_sequence_classification
from posttrain.recipe import parse_recipe
from posttrain.run.runner import run_recipe
from posttrain.stages import KINDS
from posttrain.stages.base import StageContext

#: The families whose forward computes a load-balancing loss when `output_router_logits` is on.
WITH_ROUTER_LOSS = ["qwen2_moe", "qwen3_moe", "mixtral", "olmoe"]


@pytest.mark.parametrize("name", WITH_ROUTER_LOSS)
def test_generation_never_computes_the_router_loss(name: str, family_base: Callable[[str], Path]) -> None:
    from transformers import AutoModelForCausalLM

    base = str(family_base(name))  # saved with output_router_logits: true, as TRL's SFTTrainer saved MoEs
    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base)  # a user's own loading: the flag stays on
    assert model.config.output_router_logits
    enc = tok(["Compute 1+2.", "Compute 10+20."], return_tensors="pt", padding=True)
    with pytest.raises(RuntimeError, match="must match the size"):  # the crash eval, distill and judges hit
        model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)

    gen = HFGenerator(model, tok, GenerationSpec(backend="hf"))
    out = gen.generate(["Compute 1+2.", [{"role": "user", "content": "Compute 3+4."}]], n=2,
                       sampling=SamplingParams(temperature=1.0, max_new_tokens=4, seed=0))
    assert [len(r) for r in out] == [2, 2] and not model.config.output_router_logits
    # Loading through posttrain switches it off too; a training forward still returns the loss when asked.
    loaded = load_causal_lm(base)
    assert not loaded.config.output_router_logits
    assert loaded(**enc, output_router_logits=True).aux_loss is not None


def test_a_family_without_a_sequence_classification_class_gets_one(family_base: Callable[[str], Path]) -> None:
    from transformers import AutoModelForSequenceClassification

    base = str(family_base("olmoe"))
    with_sequence_classification(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    assert type(model).__name__ == "OlmoeForSequenceClassification"
    tok = load_tokenizer(base)
    model.config.pad_token_id = tok.pad_token_id
    scores = model(**tok(["Compute 1+2.", "Compute 10+20."], return_tensors="pt", padding=True)).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    with_sequence_classification(str(family_base("qwen3_moe")))  # has its own class: left alone
    assert AutoModelForSequenceClassification.from_pretrained(
        str(family_base("qwen3_moe")), num_labels=1).__class__.__module__.endswith("modeling_qwen3_moe")


#: The checkpoint's own config class: harmless, as DeepSeek's configuration_deepseek.py is.
REMOTE_CONFIG = """\
from transformers import DeepseekV3Config


class RemoteV3Config(DeepseekV3Config):
    pass
"""
#: Its own tokenizer class, which only trust_remote_code can load (Moonlight's tiktoken tokenizer is one).
REMOTE_TOKENIZER = """\
from transformers import TokenizersBackend


class RemoteTokenizer(TokenizersBackend):
    pass
"""
#: Its own modeling code, which must never run: remote DeepSeek-V3 code cannot train here.
REMOTE_MODELING = 'raise RuntimeError("the checkpoint\'s remote modeling code ran")\n'


@pytest.fixture(scope="module")
def remote_ckpt(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DeepSeek-V3 with an `auto_map` for its (known) model_type and a tokenizer class of its own."""
    out = tmp_path_factory.mktemp("remote") / "ckpt"
    shutil.copytree(tiny_base, out)
    (out / "configuration_remote.py").write_text(REMOTE_CONFIG)
    (out / "tokenization_remote.py").write_text(REMOTE_TOKENIZER)
    (out / "modeling_remote.py").write_text(REMOTE_MODELING)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_remote.RemoteV3Config",
                          "AutoModelForCausalLM": "modeling_remote.DeepseekV3ForCausalLM"}
    (out / "config.json").write_text(json.dumps(config))
    tok = json.loads((out / "tokenizer_config.json").read_text())
    tok.update(tokenizer_class="RemoteTokenizer", auto_map={"AutoTokenizer": ["tokenization_remote.RemoteTokenizer",
                                                                                None]})
    (out / "tokenizer_config.json").write_text(json.dumps(tok))
    return out


def _untrusted_refused() -> bool:
    """Whether transformers refuses a DeepSeek-V3 checkpoint's own tokenizer class without the flag (5.2x) or loads
    its built-in tokenizer in its place (5.17, the `vllm` extra's release, which lists deepseek_v3 among the models
    whose hub tokenizer class it ignores unless trusted). Neither runs the checkpoint's code."""
    from transformers.models.auto import tokenization_auto

    return "deepseek_v3" not in getattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", ())


def test_the_tokenizer_loads_its_own_class_only_when_trusted(remote_ckpt: Path) -> None:
    assert type(load_tokenizer(str(remote_ckpt), trust_remote_code=True)).__name__ == "RemoteTokenizer"
    if _untrusted_refused():
        with pytest.raises(ValueError, match="custom code"):
            load_tokenizer(str(remote_ckpt))
    else:
        assert type(load_tokenizer(str(remote_ckpt))).__module__.startswith("transformers.")


def test_the_built_in_architecture_wins_over_remote_code_with_a_warning(
    remote_ckpt: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.WARNING, logger="posttrain.models"):
        model = load_causal_lm(str(remote_ckpt), trust_remote_code=True)  # modeling_remote.py would raise
    assert type(model).__module__ == "transformers.models.deepseek_v3.modeling_deepseek_v3"
    warned = [r.getMessage() for r in caplog.records if "ships its own modeling code" in r.getMessage()]
    assert warned and "'deepseek_v3'" in warned[0] and "DeepseekV3" in warned[0]
    model.save_pretrained(tmp_path / "saved")  # no pointer to code the saved folder does not hold
    assert "auto_map" not in json.loads((tmp_path / "saved" / "config.json").read_text())


def test_without_the_flag_nothing_remote_is_asked_for(remote_ckpt: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="posttrain.models"):
        model = load_causal_lm(str(remote_ckpt))
    assert type(model).__name__ == "DeepseekV3ForCausalLM"
    assert not [r for r in caplog.records if "ships its own modeling code" in r.getMessage()]


RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}, trust_remote_code: true}}
stages:
  - name: sft
    kind: sft
    data: {data}
    moe_balance: {{bias_update_speed: 0.0}}
    trl: {{max_steps: 2, per_device_train_batch_size: 4, logging_steps: 1, max_length: 48}}
  - name: eval_sft
    kind: eval
    model: sft
    data: {held_out}
    samples: 0
    sampling: {{max_new_tokens: 4}}
"""


def test_stages_load_the_trusted_tokenizer_and_pass_it_on(remote_ckpt: Path, tmp_path: Path) -> None:
    """SFT trains the built-in architecture with the checkpoint's tokenizer; the eval of its model (an `hf`
    generator, trust inherited from the recipe) loads that tokenizer again: without the flag it could not."""
    data, held_out = tmp_path / "sft.jsonl", tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": solution_text(r["a"], r["b"])}) + "\n"
                            for r in train_prompts(16, seed=1)))
    held_out.write_text("".join(json.dumps(r) + "\n" for r in eval_prompts(4, seed=3)))
    text = RECIPE.format(out=tmp_path / "run", base=remote_ckpt, data=data, held_out=held_out)
    report = run_recipe(parse_recipe(text, kinds=KINDS))
    assert {n: e["status"] for n, e in report["stages"].items()} == {"sft": "done", "eval_sft": "done"}, report
    saved = tmp_path / "run" / "sft" / "model"
    assert json.loads((saved / "tokenizer_config.json").read_text())["tokenizer_class"] == "RemoteTokenizer"
    assert (saved / "tokenization_remote.py").exists()
    assert "auto_map" not in json.loads((saved / "config.json").read_text())


def test_rewards_that_load_a_tokenizer_follow_the_recipes_flag(remote_ckpt: Path, tmp_path: Path) -> None:
    """An overlong reward counting tokens with the checkpoint's own tokenizer class: trusted when the recipe's model
    is, refused (one error per row, no score) when it is not; a reward given the flag itself keeps it."""
    def rewards(trusted: bool, kwargs: str = "") -> list:
        recipe = parse_recipe(f"""\
output_dir: {tmp_path / "run"}
model: {{name_or_path: {remote_ckpt}, trust_remote_code: {str(trusted).lower()}}}
stages:
  - name: e
    kind: eval
    data: org/heldout
    rewards: [{{name: overlong, kwargs: {{max_length: 8, cache_length: 4, tokenizer: {remote_ckpt}{kwargs}}}}}]
""", kinds=KINDS)
        ctx = StageContext(recipe, recipe.stages[0], tmp_path / "run", str(remote_ckpt), logging.getLogger("test"))
        return ctx.build_rewards(recipe.stages[0].rewards).functions

    [trusted] = rewards(True)
    assert type(trusted.verifier._tok()).__name__ == "RemoteTokenizer"
    scores, errors = trusted.score_with_errors(["1 + 1 = 2"])
    assert scores[0] is not None and errors == [None]
    for untrusted in rewards(False) + rewards(True, ", trust_remote_code: false"):  # the recipe's flag, its own
        scores, errors = untrusted.score_with_errors(["1 + 1 = 2"])
        if _untrusted_refused():
            assert scores == [None] and "cannot load tokenizer" in errors[0]
        else:  # transformers' own tokenizer in its place
            assert type(untrusted.verifier._tok()).__module__.startswith("transformers.") and errors == [None]
