"""Reward functions with TRL's signature: `fn(completions, **columns) -> list[float | None]`."""
