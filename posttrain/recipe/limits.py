"""What a recipe asks of its model and its GPUs, checked before anything runs.

**Lengths.** Every length a recipe sets for the recipe's own model (a trainer's `trl.max_length`, GRPO's
`trl.max_completion_length`, a generating stage's `sampling.max_new_tokens`) must fit the model's context,
`max_position_embeddings` in its config: from the built tiny model's options, a local checkpoint's
config.json, or the hub's config.json where the hub answers (offline, a note says what went unchecked).
A training completion budget that fills the whole context leaves no room for the prompt: also a problem. A
generating stage's `max_new_tokens` beyond the context only warns: generation clips it to what each prompt leaves
(a benchmark preset's 2,048 tokens on a 512-token tiny model is what a user expects to just run).

**A micro-batch's logits.** The output layer of one micro-batch holds rows x tokens x vocabulary logits;
with a 150k vocabulary that alone can exceed a GPU (16 completions of 4,096 tokens: 10 G logits). The estimate
is the rule of thumb *6 bytes per logit* (the bf16 logits, the copy the loss makes of them, and their
gradient), for the rows of one micro-batch: `per_device_train_batch_size` sequences (DPO: twice, chosen and
rejected) of `max_length` tokens (GRPO: `max_completion_length`, TRL computes logits for the completion
only). Above a quarter of `launch.gpu_memory_gb` (80 when unset), validation warns: the weights, optimizer
state and activations need the rest. Lower the micro-batch and raise `gradient_accumulation_steps`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from posttrain.core.hub import hub_unreachable, looks_local
from posttrain.recipe.check import looks_like_path
from posttrain.recipe.problems import Loc, Problems

log = logging.getLogger("posttrain.recipe")

#: Rule of thumb for the memory of one logit during training (bytes): bf16 logits, the loss's copy, the gradient.
BYTES_PER_LOGIT = 6
#: GPU memory assumed when a stage's `launch.gpu_memory_gb` is unset (an 80 GB A100/H100).
DEFAULT_GPU_GB = 80.0
#: Share of the GPU one micro-batch's logits may take before validation warns.
LOGITS_SHARE = 0.25
#: The tiny model's context (posttrain.core.tiny.TINY_DEFAULTS, which imports the schema: not imported here).
TINY_CONTEXT = 512
#: Config keys that hold a model's context length, in the order they are tried.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the checks need to know of a model (None: unknown)."""

    name: str
    context: int | None
    vocab: int | None


def check_limits(recipe: Any, problems: Problems, *, hub: bool = False) -> None:
    """Lengths against the context, and a warning (a note) when a micro-batch's logits are too large."""
    facts: dict[str, ModelFacts | None] = {}
    unchecked: set[str] = set()

    def model(ref: str | None, i: int) -> ModelFacts | None:
        source = model_source(recipe, ref, i)
        if source is None:
            return None
        if source not in facts:
            facts[source] = _facts(recipe, source, hub)
            if facts[source] is None:
                unchecked.add(recipe.model.name_or_path or source if source == "base" else source)
        return facts[source]

    for i, stage in enumerate(recipe.stages):
        loc: Loc = ("stages", i)
        trl = getattr(type(stage), "trl_config", None)
        if trl is not None:
            _check_trainer(stage, trl, model(getattr(stage, "model", None), i), loc, problems)
        sampling = getattr(stage, "sampling", None)
        if sampling is not None and hasattr(sampling, "max_new_tokens"):
            for ref in _generating_models(stage):
                _check_new_tokens(sampling.max_new_tokens, model(ref, i), loc + ("sampling", "max_new_tokens"),
                                  problems)
    if unchecked:
        problems.notes.append(f"lengths not checked against the context of {', '.join(sorted(unchecked))} (its "
                              "config.json is neither local nor reachable on the hub)")


def _check_trainer(stage: Any, ref: str, facts: ModelFacts | None, loc: Loc, problems: Problems) -> None:
    cls = ref.rpartition(":")[2]
    given = stage.trl
    options = {**_defaults(ref), **stage.trl_kwargs()}
    if facts is not None and facts.context is not None:
        if isinstance(given.get("max_length"), int) and given["max_length"] > facts.context:
            problems.add(loc + ("trl", "max_length"), f"{given['max_length']} tokens exceed the context of "
                         f"{facts.name} ({facts.context} tokens, max_position_embeddings)")
        completion = given.get("max_completion_length")
        if isinstance(completion, int) and completion >= facts.context:
            problems.add(loc + ("trl", "max_completion_length"), f"{completion} tokens leave no room for the "
                         f"prompt in the context of {facts.name} ({facts.context} tokens, max_position_embeddings)")
    if facts is None or facts.vocab is None or cls not in ("SFTConfig", "GRPOConfig", "DPOConfig"):
        return
    tokens = options.get("max_completion_length") if cls == "GRPOConfig" else options.get("max_length")
    rows = options.get("per_device_train_batch_size")
    if not isinstance(tokens, int) or not isinstance(rows, int):
        return
    rows *= 2 if cls == "DPOConfig" else 1
    gb = logits_gb(rows, tokens, facts.vocab)
    gpu = stage.launch.gpu_memory_gb or DEFAULT_GPU_GB
    if gb > LOGITS_SHARE * gpu:
        where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        problems.notes.append(
            f"warning: {where}: one micro-batch's logits take about {gb:.0f} GB ({rows} rows x {tokens} tokens x "
            f"{facts.vocab} vocabulary x {BYTES_PER_LOGIT} bytes), more than a quarter of a {gpu:g} GB GPU "
            "(launch.gpu_memory_gb): lower trl.per_device_train_batch_size and raise "
            "trl.gradient_accumulation_steps")


def logits_gb(rows: int, tokens: int, vocab: int) -> float:
    """The rule-of-thumb memory of one micro-batch's logits in GB (see the module's docstring)."""
    return rows * tokens * vocab * BYTES_PER_LOGIT / 1e9


def _check_new_tokens(value: int, facts: ModelFacts | None, loc: Loc, problems: Problems) -> None:
    if facts is not None and facts.context is not None and value >= facts.context:
        where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        problems.notes.append(f"warning: {where}: {value} new tokens leave no room for the prompt in the context of "
                              f"{facts.name} ({facts.context} tokens, max_position_embeddings): generation clips them "
                              "to what each prompt leaves")


def _generating_models(stage: Any) -> list[str | None]:
    """The models a stage generates with locally (hf, vllm), as references: an eval's model, a distill's teachers."""
    specs = [getattr(stage, "generation", None)] + list(getattr(stage, "teachers", None) or [])
    out: list[str | None] = []
    for spec in specs:
        if spec is None or not spec.loads_weights:
            continue
        out.append(spec.model if spec.model is not None else getattr(stage, "model", None))
    return out


def model_source(recipe: Any, ref: str | None, index: int) -> str | None:
    """Where the model `ref` (as stage `index` names it) comes from: "base", a local path or a hub name; an earlier
    stage's model has its own source's context. None: unknown (a later or unknown stage, a plugin)."""
    names = recipe.stage_names()
    seen: set[str] = set()
    while ref is not None and ref != "base":
        if ref not in names:
            return None if ":" in ref and not looks_like_path(ref) else ref
        if ref in seen or names.index(ref) >= index:
            return None
        seen.add(ref)
        stage = recipe.stage(ref)
        index = names.index(ref)
        ref = getattr(stage, "model", None)
        if not hasattr(stage, "model"):
            return None
    return "base"


def _facts(recipe: Any, source: str, hub: bool) -> ModelFacts | None:
    if source == "base" and recipe.model.tiny is not None:
        context = recipe.model.tiny.get("max_position_embeddings", TINY_CONTEXT)
        train = recipe.tokenizer.train
        return ModelFacts("the tiny model", context, train.vocab_size if train is not None else None)
    name = recipe.model.name_or_path if source == "base" else source
    revision = recipe.model.revision if source == "base" else None
    config = _read_config(name, revision, hub)
    if config is None:
        return None
    config = config.get("text_config") or config  # a multimodal checkpoint's language model
    context = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    vocab = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
    return ModelFacts(name, context, vocab)


def _read_config(name: str, revision: str | None, hub: bool) -> dict[str, Any] | None:
    """A model's config.json: local, or from the hub when asked and reachable; None when neither."""
    path = Path(name).expanduser()
    if path.is_dir():
        try:
            return json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return None
    if not hub or looks_local(name) or hub_unreachable() is not None:
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(name, "config.json", revision=revision, etag_timeout=5)).read_text())
    except Exception as exc:  # not on the hub, gated, no answer: what the hub name check reports
        log.debug("config.json of %s: %s", name, exc)
        return None


def _defaults(ref: str) -> dict[str, Any]:
    from posttrain.core.plugins import load_object

    fields = dataclasses.fields(load_object(ref))
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
