"""A teacher that scores its student token by token must share the student's vocabulary: checked before anything runs.

Every `teacher:` that names a model (an `on_policy_distill` stage's, a GRPO stage's distillation term) is compared
with the stage's `model:`, the student. Both are followed back to where their tokenizer comes from: an earlier
stage's model has the tokenizer of the model it was trained from, down to the recipe's base (its
`tokenizer.name_or_path`, or the base model's own) or a path or hub name. The same source is the same vocabulary;
otherwise both are read (`posttrain.core.vocab`: local folders always, hub models where the hub answers) and a
difference is a problem naming both. What cannot be read yet (a tokenizer the recipe trains when it runs, a hub
name offline) is a note: the stage compares the loaded tokenizers again before it trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from posttrain.core.vocab import Vocab, read_vocab, vocab_mismatch
from posttrain.recipe.limits import model_source
from posttrain.recipe.problems import Loc, Problems

#: The key that names a teacher model.
TEACHER_KEY = "teacher"
#: Added to every refusal: why the vocabularies must match, and that no other way exists yet.
WHY = ("on-policy distillation compares the two models' next-token distributions token by token, so they must share "
       "one tokenizer (cross-tokenizer distillation is not supported yet): pick a teacher of the student's family")


def check_teachers(recipe: Any, problems: Problems, *, hub: bool = False) -> None:
    """A problem for each teacher whose vocabulary is not its student's; a note for each pair that cannot be read
    yet."""
    cache: dict[str, Vocab | None] = {}
    unread: dict[str, list[str]] = {}  # what could not be read -> the teachers left unchecked for it
    for i, stage in enumerate(recipe.stages):
        for loc, teacher in _teachers(stage.model_dump(mode="json"), ("stages", i)):
            sources = (model_source(recipe, getattr(stage, "model", None), i), model_source(recipe, teacher, i))
            if None in sources or sources[0] == sources[1]:
                continue  # an unknown or later stage is reported by the reference checks
            for source in sources:
                if source not in cache:
                    cache[source] = _vocab(recipe, source, hub)
            student, found = (cache[s] for s in sources)
            if student is None or found is None:
                what = ", ".join(_label(recipe, s) for s in sources if cache[s] is None)
                unread.setdefault(what, []).append(_where(loc))
                continue
            problem = vocab_mismatch(student, found)
            if problem is not None:
                problems.add(loc, f"{problem}; {WHY}")
    for what, where in unread.items():
        problems.notes.append(f"{', '.join(where)}: not checked that the teacher shares the student's tokenizer "
                              f"({what} cannot be read before the run); the stage checks it before training")


def _teachers(obj: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """(location, reference) of every string under a `teacher` key (a distill stage's teacher is a mapping)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == TEACHER_KEY and isinstance(value, str):
                yield loc + (key,), value
            elif isinstance(value, dict | list):
                yield from _teachers(value, loc + (key,))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _teachers(item, loc + (i,))


def _vocab(recipe: Any, source: str, hub: bool) -> Vocab | None:
    """The vocabulary of a model source ("base": the recipe's base model with its tokenizer); None when unreadable."""
    remote = recipe.model.trust_remote_code
    if source != "base":
        return read_vocab(source, hub=hub, trust_remote_code=remote)
    if recipe.tokenizer.train is not None:
        return None  # trained when the run starts
    model = recipe.model.name_or_path
    tokenizer = recipe.tokenizer.name_or_path or model
    found = read_vocab(tokenizer, hub=hub, revision=recipe.model.revision if tokenizer == model else None,
                       trust_remote_code=remote)
    if found is None:
        return None
    if recipe.model.tiny is not None:  # built with one output row per token of its tokenizer
        rows: int | None = len(found.tokens)
    elif tokenizer == model:
        rows = found.rows
    else:
        weights = read_vocab(model, hub=hub, revision=recipe.model.revision, trust_remote_code=remote)
        rows = weights.rows if weights is not None else None
    return Vocab(_label(recipe, "base"), found.tokens, rows)


def _label(recipe: Any, source: str) -> str:
    if source != "base":
        return source
    if recipe.model.tiny is not None:
        return f"the recipe's tiny base model (tokenizer {recipe.tokenizer.name_or_path or 'trained by the recipe'})"
    return f"the recipe's base model {recipe.model.name_or_path}"


def _where(loc: Loc) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
