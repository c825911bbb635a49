"""Bradley-Terry reward model score of prompt + completion, from a checkpoint the `reward_model` stage trained.

The text is built exactly as TRL's RewardTrainer built it in training (prompt + completion + EOS, or
the chat template for conversational rows), so a score here means what it meant there. The model
loads on the first call, so the reward pickles cheaply into workers.

>>> reward = RewardModelReward(model="runs/tiny/reward_model/model", normalize="sigmoid")  # doctest: +SKIP
>>> reward(["<think>5+5=10</think> The answer is \\\\boxed{10}."], prompts=["Compute 5+5."])  # doctest: +SKIP
[0.93]
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from posttrain.core.errors import PluginError
from rewards.protocol import Scored, Verifier

#: Written next to a trained reward model by the `reward_model` stage: mean/std of held-out scores.
STATS_FILE = "reward_stats.json"
Normalize = Literal["none", "sigmoid", "zscore"]


class RewardModelReward(Verifier):
    """Bradley-Terry reward model score of prompt + completion (kwargs: model, batch_size, normalize)."""

    transient = (("_model", None), ("_tokenizer", None))  # reloaded lazily in the worker

    def __init__(
        self,
        model: str,
        batch_size: int = 16,
        normalize: Normalize = "none",
        mean: float | None = None,
        std: float | None = None,
        device: str | None = None,
        max_length: int | None = None,
        trust_remote_code: bool = False,
    ):
        if normalize not in ("none", "sigmoid", "zscore"):
            raise PluginError(f"reward_model: normalize must be none, sigmoid or zscore, got {normalize!r}")
        if batch_size < 1:
            raise PluginError(f"reward_model: batch_size must be at least 1, got {batch_size}")
        if not model:
            raise PluginError("reward_model: give `model`, the folder of a trained reward model "
                              "(a reward_model stage's name in a recipe, or DIR/<stage>/model)")
        self.model_path = str(model)
        self.batch_size = batch_size
        self.normalize = normalize
        self.mean, self.std = mean, std
        self.device = device
        self.max_length = max_length
        self.trust_remote_code = trust_remote_code  # the checkpoint's own tokenizer/model classes may run
        self._model: Any = None
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        return f"RewardModelReward(model={self.model_path!r}, normalize={self.normalize!r})"

    def score_rows(self, completions: Sequence[Any], prompts: Sequence[Any] | None = None,
                   **kwargs: Any) -> list[Scored]:
        n = len(completions)
        if prompts is None:
            prompts = [""] * n
        if len(prompts) != n:
            raise ValueError(f"reward_model: {len(prompts)} prompts for {n} completions")
        self._load()
        raw = score_texts(self._model, self._tokenizer, list(prompts), list(completions), self.batch_size,
                          self.max_length)
        return [Scored(self._normalized(s)) for s in raw]

    def _normalized(self, score: float) -> float:
        if self.normalize == "sigmoid":
            return 1.0 / (1.0 + math.exp(-score))
        if self.normalize == "zscore":
            assert self.mean is not None and self.std is not None
            return (score - self.mean) / self.std
        return score

    def setup(self) -> None:
        """Load the model now: a wrong `model` fails before training, in one line naming the path."""
        self._load()

    def _load(self) -> None:
        if self._model is not None:
            return
        from posttrain.core.hub import check_model_source

        path = Path(self.model_path)
        local_only = check_model_source(self.model_path, "reward_model", "`model` is a reward_model stage's name, "
                                        "its DIR/<stage>/model folder, or a hub model")
        if self.normalize == "zscore" and (self.mean is None or self.std is None):
            stats = _read_stats(path)
            if stats is None:
                raise PluginError(f"reward_model: normalize=zscore needs `mean` and `std`, or {STATS_FILE} next to "
                                  f"the model (written by the reward_model stage); {path} has none")
            self.mean = stats["mean"] if self.mean is None else self.mean
            self.std = stats["std"] if self.std is None else self.std
        if self.std is not None and self.std <= 0:
            raise PluginError(f"reward_model: std must be positive, got {self.std}")
        self._model, self._tokenizer = load_reward_model(self.model_path, self.device, local_files_only=local_only,
                                                           trust_remote_code=self.trust_remote_code)


def _read_stats(path: Path) -> dict[str, float] | None:
    try:
        stats = json.loads((path / STATS_FILE).read_text())
        return {"mean": float(stats["mean"]), "std": float(stats["std"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_reward_model(path: str, device: str | None = None, local_files_only: bool = False,
                      trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A sequence-classification model with one label (in eval mode) and its right-padding tokenizer.

    `local_files_only`: a cached hub model while the hub is out of reach (no retries against it)."""
    import torch
    from transformers import AutoTokenizer

    from posttrain.core.models import load_sequence_classifier

    try:
        hub = {"local_files_only": True} if local_files_only else {}
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **hub)
        model = load_sequence_classifier(path, hub)  # built-in architectures only
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PluginError(f"reward_model: cannot load a reward model from {path!r}: {first}") from None
    if model.config.num_labels != 1:
        raise PluginError(f"reward_model: {path} has num_labels={model.config.num_labels}; a Bradley-Terry reward "
                          "model has one output (train it with the reward_model stage)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    return model, tokenizer


def encode(tokenizer: Any, prompt: Any, completion: Any) -> list[int]:
    """Token ids of one row, built as TRL's RewardTrainer builds them (so training and scoring agree)."""
    if isinstance(prompt, list) or isinstance(completion, list):
        messages = list(prompt or []) if isinstance(prompt, list) else ([{"role": "user", "content": prompt}]
                                                                         if prompt else [])
        messages += completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    text = str(prompt or "") + str(completion)
    if tokenizer.eos_token and not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return list(tokenizer(text=text)["input_ids"])


def score_texts(model: Any, tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any],
                batch_size: int = 16, max_length: int | None = None) -> list[float]:
    """Raw reward per (prompt, completion), in batches of similar length (right padding, as in training)."""
    import torch

    ids = [encode(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    if max_length is not None:
        ids = [x[-max_length:] for x in ids]  # keep the end: the score is read at the last token
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scores = [0.0] * len(ids)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for row, i in enumerate(chunk):
                scores[i] = float(logits[row, 0])
    return scores
