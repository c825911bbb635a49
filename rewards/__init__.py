"""Reward functions with TRL's signature: `fn(completions, **columns) -> list[float | None]`.

`rewards.get_reward(name_or_path, **kwargs)` finds one (`list_rewards()` names them, `RewardMix` scores
a weighted mix of them). These names load on first use, so `import rewards` stays cheap (no torch, no sympy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rewards.mix import RewardMix, combine
    from rewards.protocol import Scored, Verifier
    from rewards.registry import Reward, get_reward, list_rewards

__all__ = ["Reward", "RewardMix", "Scored", "Verifier", "combine", "get_reward", "list_rewards"]


def __getattr__(name: str) -> Any:
    if name in ("Reward", "get_reward", "list_rewards"):
        from rewards import registry

        return getattr(registry, name)
    if name in ("RewardMix", "combine"):
        from rewards import mix

        return getattr(mix, name)
    if name in ("Scored", "Verifier"):
        from rewards import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")
