"""A distillation teacher as the trainer stages load it: resolved, frozen, and refused when its vocabulary is not the
student's (the run-time twin of `posttrain/recipe/teachers.py`, for what validation could not read beforehand:
a tokenizer the recipe trained, a hub model offline)."""

from __future__ import annotations

from typing import Any

from posttrain.core.errors import StageError
from posttrain.stages.base import StageContext


def load_teacher(ctx: StageContext, ref: str, student_tokenizer: Any, student_rows: int | None) -> tuple[Any, str]:
    """(the teacher model in eval mode without gradients, its path) for the stage's `teacher: ref`; a `StageError`
    naming both models when the teacher's tokenizer or output layer differs from the student's."""
    from posttrain.core.hub import check_model_source
    from posttrain.core.models import load_causal_lm, load_tokenizer, without_router_logits
    from posttrain.core.vocab import tokenizer_vocab, vocab_mismatch
    from posttrain.recipe.teachers import WHY

    path = ctx.resolve_model(ref)
    offline = check_model_source(path, f"stage {ctx.config.name!r}: teacher",
                                 "the teacher is an earlier stage's name, a model folder or a hub name")
    hub = {"local_files_only": True} if offline else {}
    remote = ctx.recipe.model.trust_remote_code
    student_model = getattr(ctx.config, "model", None) or "base"
    problem = vocab_mismatch(tokenizer_vocab(student_tokenizer, f"{student_model} ({ctx.resolve_model(student_model)})",
                                             student_rows),
                             tokenizer_vocab(load_tokenizer(path, trust_remote_code=remote, **hub), f"{ref} ({path})"))
    if problem is not None:
        raise StageError(f"stage {ctx.config.name!r}: {problem}; {WHY}")
    teacher = load_causal_lm(path, dtype="auto", trust_remote_code=remote, **hub)
    without_router_logits(teacher)
    rows = teacher.config.get_text_config().vocab_size
    if student_rows is not None and rows != student_rows:
        raise StageError(f"stage {ctx.config.name!r}: the teacher {ref} ({path}) has an output layer of {rows:,} rows "
                         f"and the student {student_rows:,}; {WHY}")
    return teacher.eval().requires_grad_(False), path
