"""Reward functions with TRL's signature: `fn(completions, **columns) -> list[float | None]`.

`rewards.get_reward(name_or_path, **kwargs)` finds one (`list_rewards()` names them, `combine` mixes
their scores). These names load on first use, so `import rewards` stays cheap (no torch, no sympy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rewards.protocol import Scored, Verifier
    from rewards.registry import Reward, combine, get_reward, list_rewards

__all__ = ["Reward", "Scored", "Verifier", "combine", "get_reward", "list_rewards"]


def __getattr__(name: str) -> Any:
    if name in ("Reward", "combine", "get_reward", "list_rewards"):
        from rewards import registry

        return getattr(registry, name)
    if name in ("Scored", "Verifier"):
        from rewards import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")
