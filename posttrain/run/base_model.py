"""The recipe's base model and tokenizer, materialised once per run in DIR/base_model/: a tiny DeepSeek-V3 built
from its config (`posttrain.core.tiny`), or a hub model whose tokenizer the recipe trains, saved with
`save_pretrained` so that every later stage loads it by path like any hub model; a hub model used as it is is
only named."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from posttrain.core.run_folder import BASE_DIR, BASE_STAMP
from posttrain.core.tiny import build_tiny_model, train_tokenizer
from posttrain.recipe import ModelSpec, Recipe, TokenizerSpec

log = logging.getLogger("posttrain.run.base_model")


def base_fingerprint(recipe: Recipe) -> str:
    payload = {"model": recipe.model.model_dump(mode="json"), "tokenizer": recipe.tokenizer.model_dump(mode="json"),
               "seed": recipe.seed if _builds_something(recipe) else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _builds_something(recipe: Recipe) -> bool:
    return recipe.model.tiny is not None or recipe.tokenizer.train is not None


def base_model_ref(recipe: Recipe, run_dir: Path) -> str:
    """Where stages load the base model from: DIR/base_model when built, else the hub name/path."""
    if _builds_something(recipe):
        return str(run_dir / BASE_DIR)
    assert recipe.model.name_or_path is not None
    return recipe.model.name_or_path


def materialize_base(recipe: Recipe, run_dir: Path) -> tuple[str, str]:
    """Build (or reuse) the base model + tokenizer; return (reference, fingerprint)."""
    fingerprint = base_fingerprint(recipe)
    ref = base_model_ref(recipe, run_dir)
    if not _builds_something(recipe):
        return ref, fingerprint
    out = Path(ref)
    stamp = out / BASE_STAMP
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
        return ref, fingerprint
    log.info("building the base model in %s", out)
    tokenizer = _make_tokenizer(recipe.tokenizer, recipe.model)
    if recipe.model.tiny is not None:
        model = build_tiny_model(tokenizer, recipe.model.tiny, seed=recipe.seed)
    else:
        from posttrain.core.models import load_causal_lm

        model = load_causal_lm(recipe.model.name_or_path or "", recipe.model)
        model.resize_token_embeddings(len(tokenizer))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "parameters": n_params}))
    log.info("base model: %s, %.2fM parameters, vocabulary %d", type(model).__name__, n_params / 1e6,
             len(tokenizer))
    return ref, fingerprint


def _make_tokenizer(spec: TokenizerSpec, model: ModelSpec) -> Any:
    if spec.train is not None:
        from posttrain.core.plugins import load_object

        corpus = load_object(spec.train.corpus)(**spec.train.corpus_kwargs)
        return train_tokenizer(corpus, spec.train.vocab_size, tool_calls=spec.train.tool_calls)
    from transformers import AutoTokenizer

    name = spec.name_or_path or model.name_or_path
    if name is None:
        from posttrain.core.errors import RecipeError

        raise RecipeError(["tokenizer: a tiny model needs 'tokenizer.train' or 'tokenizer.name_or_path'"])
    return AutoTokenizer.from_pretrained(name, trust_remote_code=model.trust_remote_code)
