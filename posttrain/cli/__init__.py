"""The `posttrain` command: `run`, `validate`, `report` (`main.py`), `eval` (`eval.py`), and the subcommands other
packages add (`rewards`, `rollout-server`)."""

from posttrain.cli.main import main

__all__ = ["main"]
