"""What a recipe asks of its model and its GPUs, checked before anything runs.

**Lengths.** Every length a recipe sets for the recipe's own model (a trainer's `trl.max_length`, GRPO's
`trl.max_completion_length`, a generating stage's `sampling.max_new_tokens`) must fit the model's context,
`max_position_embeddings` in its config: from the built tiny model's options, a local checkpoint's
config.json, or the hub's config.json where the hub answers (offline, a note says what went unchecked).
A training completion budget that fills the whole context leaves no room for the prompt: also a problem. A
generating stage's `max_new_tokens` beyond the context only warns: generation clips it to what each prompt leaves
(a benchmark preset's 2,048 tokens on a 512-token tiny model is what a user expects to just run).

**A micro-batch's logits.** TRL 1.16's SFT, GRPO and DPO trainers never hold a micro-batch's full logits: their
fused LM head (`trl.trainer.utils.add_fused_lm_head`) projects at most 4,096 tokens x 32,768 vocabulary entries at a
time (TRL's `TOKEN_CHUNK_SIZE` and `_CHUNKED_LOGPROB_CHUNK_SIZE`, read from the installed TRL) in the compute dtype,
a quarter of a GB in bf16, whatever the batch. What does hold them is the MTP loss (posttrain's, on a model with
DeepSeek-V3's MTP module and `mtp.weight` > 0): fp32 logits of every target token at every depth, *10 bytes per
logit* with the bf16 projection and the gradient. The rows of one micro-batch: `per_device_train_batch_size`
sequences (DPO: twice, chosen and rejected) of `max_length` tokens (GRPO: `max_completion_length`, TRL scores the
completion only). Above a quarter of `launch.gpu_memory_gb` (80 when unset), validation warns: the weights, optimizer
state and activations need the rest. Lower the micro-batch and raise `gradient_accumulation_steps`.

**vLLM.** A stage that names `backend: vllm` (a GRPO stage's `rollout:`, an eval, pass-rate or distill engine
that loads the weights) on a model with MLA head sizes vLLM 0.31 cannot build (`core/vllm_limits.py`) gets a
warning: vLLM would not start. (`rollout.backend: auto` falls back to transformers there by itself.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any

from posttrain.core.hub import hub_unreachable, looks_local
from posttrain.core.vllm_limits import mla_problem
from posttrain.recipe.check import looks_like_path
from posttrain.recipe.problems import Loc, Problems

log = logging.getLogger("posttrain.recipe")

#: Memory of one logit the fused head's tile holds (bytes): the compute dtype, bf16 on a GPU.
TILE_BYTES_PER_LOGIT = 2
#: Memory of one logit of the MTP loss (bytes): the bf16 projection, its fp32 copy and the fp32 gradient.
MTP_BYTES_PER_LOGIT = 10
#: GPU memory assumed when a stage's `launch.gpu_memory_gb` is unset (an 80 GB A100/H100).
DEFAULT_GPU_GB = 80.0
#: Share of the GPU one micro-batch's logits may take before validation warns.
LOGITS_SHARE = 0.25
#: Config keys that hold a model's context length, in the order they are tried.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the checks need to know of a model (None: unknown)."""

    name: str
    context: int | None
    vocab: int | None
    #: MTP depths (DeepSeek-V3's `num_nextn_predict_layers`): the MTP loss computes full logits for each.
    mtp_depth: int = 0
    #: Why vLLM 0.31 cannot build the model's MLA attention (None: it can, or no MLA).
    vllm_problem: str | None = None


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
        for where, ref in _vllm_models(stage):
            facts_ = model(ref, i)
            if facts_ is not None and facts_.vllm_problem is not None:
                problems.notes.append(f"warning: {_where(loc + where)}: backend vllm: {facts_.name} cannot run in vLLM "
                                      f"0.31: {facts_.vllm_problem} (vLLM would not start; use transformers/hf)")
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
    mtp = facts.mtp_depth if getattr(getattr(stage, "mtp", None), "weight", 0) > 0 else 0
    gb = logits_gb(rows, tokens, facts.vocab, mtp)
    gpu = stage.launch.gpu_memory_gb or DEFAULT_GPU_GB
    if gb > LOGITS_SHARE * gpu:
        problems.notes.append(
            f"warning: {_where(loc)}: one micro-batch's logits take about {gb:.0f} GB (the MTP loss: {mtp} depth(s) x "
            f"{rows} rows x {tokens} tokens x {facts.vocab} vocabulary x {MTP_BYTES_PER_LOGIT} bytes, beside the fused "
            f"head's tile), more than a quarter of a {gpu:g} GB GPU (launch.gpu_memory_gb): lower "
            "trl.per_device_train_batch_size and raise trl.gradient_accumulation_steps")


def logits_gb(rows: int, tokens: int, vocab: int, mtp_depth: int = 0) -> float:
    """The logits one micro-batch holds at once in GB (see the module's docstring): the fused head's tile, and the
    MTP loss's logits for `mtp_depth` depths."""
    tile_tokens, tile_vocab = fused_head_tile()
    tile = min(rows * tokens, tile_tokens) * min(vocab, tile_vocab) * TILE_BYTES_PER_LOGIT
    return (tile + mtp_depth * rows * tokens * vocab * MTP_BYTES_PER_LOGIT) / 1e9


@functools.cache
def fused_head_tile() -> tuple[int, int]:
    """(tokens, vocabulary entries) TRL's fused LM head projects at a time, from the installed TRL."""
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    return TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE


def _where(loc: Loc) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")


def _check_new_tokens(value: int, facts: ModelFacts | None, loc: Loc, problems: Problems) -> None:
    if facts is not None and facts.context is not None and value >= facts.context:
        problems.notes.append(f"warning: {_where(loc)}: {value} new tokens leave no room for the prompt in the "
                              f"context of {facts.name} ({facts.context} tokens, max_position_embeddings): generation "
                              "clips them to what each prompt leaves")


def _generating_models(stage: Any) -> list[str | None]:
    """The models a stage generates with locally (hf, vllm), as references: an eval's model, a distill's teachers."""
    specs = [getattr(stage, "generation", None)] + list(getattr(stage, "teachers", None) or [])
    out: list[str | None] = []
    for spec in specs:
        if spec is None or not spec.loads_weights:
            continue
        out.append(spec.model if spec.model is not None else getattr(stage, "model", None))
    return out


def _vllm_models(stage: Any) -> list[tuple[Loc, str | None]]:
    """(where, model reference) of each engine a stage names `backend: vllm` for: GRPO's rollouts, an eval's or
    pass-rate filter's generation, distill's teachers."""
    out: list[tuple[Loc, str | None]] = []
    rollout = getattr(stage, "rollout", None)
    if getattr(rollout, "backend", None) == "vllm":
        out.append((("rollout", "backend"), getattr(stage, "model", None)))
    spec = getattr(stage, "generation", None)
    if spec is not None and spec.backend == "vllm":
        out.append((("generation", "backend"), spec.model if spec.model is not None else getattr(stage, "model", None)))
    for j, teacher in enumerate(getattr(stage, "teachers", None) or []):
        if teacher.backend == "vllm":
            out.append((("teachers", j, "backend"), teacher.model))
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
        from posttrain.core.tiny import TINY_DEFAULTS

        tiny = {**TINY_DEFAULTS, **recipe.model.tiny}
        train = recipe.tokenizer.train
        return ModelFacts("the tiny model", tiny.get("max_position_embeddings"),
                          train.vocab_size if train is not None else None, _mtp_depth(tiny), mla_problem(tiny))
    name = recipe.model.name_or_path if source == "base" else source
    revision = recipe.model.revision if source == "base" else None
    config = _read_config(name, revision, hub)
    if config is None:
        return None
    config = config.get("text_config") or config  # a multimodal checkpoint's language model
    context = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    vocab = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
    return ModelFacts(name, context, vocab, _mtp_depth(config), mla_problem(config))


def _mtp_depth(config: dict[str, Any]) -> int:
    """MTP depths of a DeepSeek-V3 config (the model type posttrain builds and restores MTP modules for)."""
    depth = config.get("num_nextn_predict_layers")
    return depth if config.get("model_type", "deepseek_v3") == "deepseek_v3" and isinstance(depth, int) else 0


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
