"""Logging set-up: one readable line per event on stderr, and the same in DIR/posttrain.log."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


class _RunLogHandler(logging.FileHandler):
    """DIR/posttrain.log. When it cannot be written (a full disk) it stops trying: the terminal keeps the log, and
    the error that stops the run says why, instead of a traceback per log record."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True


def setup_logging(run_dir: Path | None, level: int = logging.INFO, rank: int = 0) -> None:
    root = logging.getLogger("posttrain")
    root.setLevel(level if rank == 0 else logging.WARNING)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(stream)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        file_handler = _RunLogHandler(run_dir / "posttrain.log")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(file_handler)
    # Libraries' chatter that says nothing to a user of a recipe.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for noisy in ("transformers", "datasets", "accelerate", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()  # per-map and per-shard bars on small data are noise, not progress
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
