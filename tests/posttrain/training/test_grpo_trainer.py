"""The trainers are declared once, and every TRL (or transformers) method they override still exists in the pinned
TRL and takes what we pass on: a release that renames a private method fails here, not silently in a run."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from posttrain.training import grpo_trainer, trainers


def _params(fn: Any) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())


def _compatible(ours: Any, theirs: Any) -> str | None:
    """None when `ours` accepts every call `theirs` accepts (the same named parameters in the same order, or our
    *args/**kwargs taking the rest), else why not."""
    mine, trl = _params(ours), _params(theirs)
    takes_args = any(p.kind is p.VAR_POSITIONAL for p in mine)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in mine)
    named = [p for p in mine if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for i, p in enumerate(q for q in trl if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)):
        if i < len(named):
            if named[i].name != p.name and not takes_kwargs:
                return f"parameter {i} is {p.name!r} in TRL, {named[i].name!r} in ours"
        elif not takes_args:
            return f"TRL passes {p.name!r}, which ours does not take"
    for p in trl:
        if p.kind is p.KEYWORD_ONLY and p.name not in {q.name for q in mine} and not takes_kwargs:
            return f"TRL's keyword {p.name!r} is not taken by ours"
    return None


CASES = [(grpo_trainer.GRPOTrainer, name, owner) for name, owners in grpo_trainer.OVERRIDES.items()
         for owner in owners]
CASES += [(cls, name, owner) for cls in (trainers.SFTTrainer, trainers.RewardTrainer, trainers.DPOTrainer)
          for name, owners in trainers.OVERRIDES.items() for owner in owners]
CASES += [(trainers.OnPolicyDistillTrainer, name, owner) for name, owners in trainers.DISTILLATION_OVERRIDES.items()
          for owner in owners]


@pytest.mark.parametrize(("trainer", "name", "owner"), CASES,
                         ids=[f"{t.__name__}.{n}@{o}" for t, n, o in CASES])
def test_every_overridden_method_still_exists_in_the_pinned_trl(trainer: type, name: str, owner: str) -> None:
    ours_cls = next(c for c in trainer.__mro__ if c.__name__ == owner and c.__module__.startswith("posttrain."))
    assert name in vars(ours_cls), f"{owner} no longer defines {name}: update OVERRIDES"
    trl_base = next(c for c in trainer.__mro__ if c.__module__.split(".")[0] == "trl")
    theirs = getattr(trl_base, name, None)
    assert theirs is not None, f"{trl_base.__name__} has no {name} any more: {owner}'s override is dead"
    assert not any(name in vars(c) for c in trl_base.__mro__ if c.__module__.startswith("posttrain.")), name
    problem = _compatible(vars(ours_cls)[name], theirs)
    assert problem is None, f"{owner}.{name} against {trl_base.__name__}.{name}: {problem}"


def test_the_override_tables_name_every_override() -> None:
    """A method of ours that shadows TRL's without being listed would escape the check above."""
    tables = ((grpo_trainer.GRPOTrainer, grpo_trainer.OVERRIDES), (trainers.SFTTrainer, trainers.OVERRIDES),
              (trainers.OnPolicyDistillTrainer, trainers.DISTILLATION_OVERRIDES))
    for trainer, table in tables:
        trl_base = next(c for c in trainer.__mro__ if c.__module__.split(".")[0] == "trl")
        ours = [c for c in trainer.__mro__ if c.__module__.startswith("posttrain.")]
        shadowing = {(name, c.__name__) for c in ours for name, value in vars(c).items()
                     if callable(value) and hasattr(trl_base, name) and name not in ("__doc__", "__module__")}
        listed = {(name, owner) for name, owners in table.items() for owner in owners}
        assert shadowing <= listed, f"{trainer.__name__}: unlisted overrides {sorted(shadowing - listed)}"


def test_the_check_catches_a_renamed_argument() -> None:
    def theirs(self: Any, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> None: ...

    def renamed(self: Any, inputs: Any, prompts: Any, texts: Any, completion_ids_list: Any) -> None: ...

    def fewer(self: Any, inputs: Any) -> None: ...

    def flexible(self: Any, inputs: Any, *args: Any, **kwargs: Any) -> None: ...

    assert "'completions'" in (_compatible(renamed, theirs) or "")
    assert "does not take" in (_compatible(fewer, theirs) or "")
    assert _compatible(flexible, theirs) is None
