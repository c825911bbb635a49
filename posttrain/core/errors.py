"""Errors a user can cause. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations


class PosttrainError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class RecipeError(PosttrainError):
    """A recipe that does not validate; carries every problem found, not just the first."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RunFolderError(PosttrainError):
    """The output folder cannot be used as it is: a file in its place, read-only, full, locked by another run."""


class StageError(PosttrainError):
    """A stage cannot run as configured (missing input, wrong reference, ...)."""


class DataError(PosttrainError):
    """Input data is malformed: a missing column, a bad row."""


class PluginError(PosttrainError):
    """A plugin (reward function, teacher, generator) cannot be found or loaded."""


class MissingDependencyError(PosttrainError):
    """An optional dependency (vLLM, bubblewrap, ...) is needed but not installed."""
