"""Whether two models share a vocabulary: what distilling a student from a teacher's token distribution needs.

On-policy distillation compares the teacher's and the student's next-token distributions position by position,
so token i must be the same string for both and both output layers must have as many rows. A teacher with
another tokenizer would train the student towards the wrong tokens without any error (TRL checks only the
sizes), so `posttrain validate` refuses it, naming both (until cross-tokenizer distillation is supported).

`read_vocab` reads what a model folder (or a hub model, where the hub answers) says of its vocabulary without
loading a model: the tokenizer's token → id mapping from tokenizer.json (or through transformers' tokenizer when
the folder has none) and `vocab_size` from config.json (the output layer's rows; None when unknown).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.core.hub import hub_unreachable, looks_local

log = logging.getLogger("posttrain.core.vocab")


@dataclass(frozen=True)
class Vocab:
    """A model's vocabulary as distillation sees it."""

    #: The model (folder or hub name), as a message names it.
    name: str
    #: The tokenizer's tokens by id (the base vocabulary and the added tokens).
    tokens: dict[str, int]
    #: Rows of the model's output layer (config.json `vocab_size`); None when unknown.
    rows: int | None = None

    @property
    def digest(self) -> str:
        text = json.dumps(sorted(self.tokens.items(), key=lambda kv: kv[1]), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        rows = f", an output layer of {self.rows:,} rows" if self.rows is not None else ""
        return f"{self.name} ({len(self.tokens):,} tokens{rows})"


def vocab_mismatch(student: Vocab, teacher: Vocab) -> str | None:
    """Why `teacher` cannot teach `student` token by token, or None when their vocabularies are the same."""
    if student.tokens != teacher.tokens:
        mine, theirs = _by_id(student.tokens), _by_id(teacher.tokens)
        index = min(i for i in mine.keys() | theirs.keys() if mine.get(i) != theirs.get(i))
        return (f"the teacher's tokenizer differs from the student's: teacher {teacher.describe()}, student "
                f"{student.describe()}; e.g. token {index} is {_shown(theirs.get(index))} for the teacher and "
                f"{_shown(mine.get(index))} for the student")
    if student.rows is not None and teacher.rows is not None and student.rows != teacher.rows:
        return (f"the teacher's output layer has {teacher.rows:,} rows and the student's {student.rows:,} (same "
                f"tokenizer, padded differently: teacher {teacher.name}, student {student.name}); the distributions "
                "are compared over the whole output layer")
    return None


def _by_id(tokens: dict[str, int]) -> dict[int, str]:
    return {i: t for t, i in tokens.items()}


def _shown(token: str | None) -> str:
    return "absent" if token is None else repr(token)


def read_vocab(name_or_path: str, *, hub: bool = False, revision: str | None = None,
               trust_remote_code: bool = False) -> Vocab | None:
    """The vocabulary of a model folder, or of a hub model when `hub` and the hub answers; None when neither can be
    read (nothing to compare: the caller says what went unchecked)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _local_vocab(path, trust_remote_code)
    if not hub or looks_local(name_or_path) or hub_unreachable() is not None:
        return None
    return _hub_vocab(name_or_path, revision, trust_remote_code)


def tokenizer_vocab(tokenizer: Any, name: str, rows: int | None = None) -> Vocab:
    """The vocabulary of a loaded tokenizer (what a stage compares at run time)."""
    return Vocab(name, dict(tokenizer.get_vocab()), rows)


def _local_vocab(path: Path, trust_remote_code: bool) -> Vocab | None:
    rows = _config_rows(path / "config.json")
    tokens = _tokenizer_json_tokens(path / "tokenizer.json")
    if tokens is None:
        tokens = _loaded_tokens(str(path), trust_remote_code)
    return Vocab(str(path), tokens, rows) if tokens is not None else None


def _hub_vocab(name: str, revision: str | None, trust_remote_code: bool) -> Vocab | None:
    from huggingface_hub import hf_hub_download

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(name, filename, revision=revision, etag_timeout=5))
        except Exception as exc:  # not on the hub, gated, no answer, a tokenizer without that file
            log.debug("%s of %s: %s", filename, name, exc)
            return None

    config, tokenizer = fetch("config.json"), fetch("tokenizer.json")
    tokens = _tokenizer_json_tokens(tokenizer) if tokenizer is not None else None
    if tokens is None:
        tokens = _loaded_tokens(name, trust_remote_code, revision=revision)
    rows = _config_rows(config) if config is not None else None
    return Vocab(name, tokens, rows) if tokens is not None else None


def _config_rows(path: Path) -> int | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config") or config  # a multimodal checkpoint's language model
    rows = config.get("vocab_size")
    return rows if isinstance(rows, int) else None


def _tokenizer_json_tokens(path: Path) -> dict[str, int] | None:
    """Tokens by id from a fast tokenizer's file: the model's vocabulary (BPE/WordPiece: a mapping; Unigram: a list
    of [piece, score]) and the added tokens."""
    try:
        data = json.loads(path.read_text())
        vocab = data["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(vocab, dict):
        tokens = {str(k): int(v) for k, v in vocab.items()}
    elif isinstance(vocab, list):
        tokens = {str(piece[0]): i for i, piece in enumerate(vocab)}
    else:
        return None
    for added in data.get("added_tokens") or []:
        if isinstance(added, dict) and "content" in added and "id" in added:
            tokens[str(added["content"])] = int(added["id"])
    return tokens


def _loaded_tokens(name: str, trust_remote_code: bool, **kwargs: Any) -> dict[str, int] | None:
    try:
        from transformers import AutoTokenizer

        return dict(AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs).get_vocab())
    except Exception as exc:  # no tokenizer there: nothing to compare
        log.debug("tokenizer of %s: %s", name, exc)
        return None
