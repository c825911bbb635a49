"""The final save of a trainer stage: one whole model in DIR/<stage>/model/, however training was sharded.

Under DeepSpeed ZeRO-3 or FSDP every process holds a shard of each weight: the unwrapped model's own
tensors are empty (ZeRO-3) or partial (FSDP), so `model.save_pretrained()` on it writes nothing usable.
The weights are gathered first, on every process, into one state dict on the main process (ZeRO-3: layer
by layer, in the training dtype, even when the DeepSpeed config leaves `stage3_gather_16bit_weights_on_
model_save` off; FSDP and the rest: accelerate's full state dict), and that state dict is what is saved.

LoRA is merged on a reload, on the main process alone: the adapter is saved from the gathered weights,
the base model is loaded again in full precision (never partitioned: ZeRO-3's loading hook is held off),
the adapter merged into it, and what training changed outside the adapter (the router biases that
DeepSeek-V3's balancing moves are buffers, not LoRA weights) copied over. Each tensor is saved in the
dtype it was trained in. Folders are written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from posttrain.core.run_folder import ADAPTER_DIR, MODEL_DIR, TMP_SUFFIX, replace_dir
from posttrain.stages.base import StageContext


def is_sharded(trainer: Any) -> bool:
    """Whether each process holds only a shard of the weights (ZeRO-3 or FSDP)."""
    return bool(getattr(trainer, "is_fsdp_enabled", False)) or _is_zero3(trainer)


def _is_zero3(trainer: Any) -> bool:
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return False
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    config = getattr(plugin, "deepspeed_config", None) or {}
    return int(config.get("zero_optimization", {}).get("stage", 0) or 0) == 3


def consolidated_state_dict(trainer: Any, trainable_only: bool = False) -> dict[str, Any] | None:
    """The whole model's state dict on the main process (None or a partial dict elsewhere); every process must
    call it. `trainable_only` leaves out frozen parameters where gathering them would cost (ZeRO-3 with LoRA)."""
    if _is_zero3(trainer):
        engine = trainer.model_wrapped
        if hasattr(engine, "_zero3_consolidated_16bit_state_dict"):
            # What accelerate's get_state_dict calls, without its refusal when the config's 16-bit save flag is off.
            return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=trainable_only)
    return trainer.accelerator.get_state_dict(trainer.model)


@contextlib.contextmanager
def loading_unsharded() -> Iterator[None]:
    """`from_pretrained` in one process while ZeRO-3 is configured: without `zero.Init`, which would partition
    the model and wait for the other processes to do the same."""
    from transformers.integrations import deepspeed as hf_deepspeed

    held = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = held


def save_final(trainer: Any, tokenizer: Any, ctx: StageContext, base: str) -> Path:
    """Save the trained model (LoRA merged into `base`, the model the stage started from) and its tokenizer to
    DIR/<stage>/model/, written as model.tmp/ and renamed when complete: a folder named model/ is always whole."""
    out = ctx.stage_dir / MODEL_DIR
    model = trainer.accelerator.unwrap_model(trainer.model)
    lora = getattr(ctx.config, "lora", None)
    peft = lora is not None and hasattr(model, "merge_and_unload")
    state = consolidated_state_dict(trainer, trainable_only=peft)
    if peft:
        _save_atomically(trainer, ctx.stage_dir / ADAPTER_DIR,
                         lambda path: model.save_pretrained(path, state_dict=state))
        trust = ctx.recipe.model.trust_remote_code

        def save(path: Path) -> None:
            merged = merge_on_reload(base, lora, trained_part(model, state or {}), trained_dtypes(model), trust,
                                     task_type=_task_type(model), num_labels=model.config.num_labels)
            pad = model.config.get_text_config().pad_token_id  # a reward model scores padded batches with it
            if pad is not None:
                merged.config.get_text_config().pad_token_id = pad
            merged.config.use_cache = True  # trainers switch the KV cache off; generation from this model needs it
            merged.save_pretrained(path)
            tokenizer.save_pretrained(path)
    else:
        def save(path: Path) -> None:
            model.config.use_cache = True
            model.save_pretrained(path, state_dict=state)
            tokenizer.save_pretrained(path)

    _save_atomically(trainer, out, save)
    return out


def trained_part(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """What training changed in a peft model, from its gathered `state`: the trainable parameters (the adapter,
    modules_to_save) and every buffer (the router biases that balancing moves)."""
    wanted = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in wanted}


def trained_dtypes(model: Any) -> dict[str, Any]:
    """Parameter name as the merged model calls it -> the dtype it was trained in."""
    return {_plain_name(name): p.dtype for name, p in model.named_parameters()}


def _plain_name(name: str) -> str:
    """A peft model's parameter name without the wrapping (`base_model.model.` and each LoRA `.base_layer.`)."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def merge_on_reload(base: str, lora: Any, trained: dict[str, Any], dtypes: dict[str, Any],
                    trust_remote_code: bool = False, task_type: str = "CAUSAL_LM", num_labels: int = 1) -> Any:
    """`base` loaded in float32 (unpartitioned), wrapped with LoRA exactly as for training (`apply_lora`, so the
    fused experts' adapters nest the same way), the trained tensors loaded, the adapter merged in, and each
    parameter cast back to the dtype it trained in (`dtypes`). `task_type` SEQ_CLS: a reward model, reloaded
    with its score head (which LoRA trains whole, as modules_to_save)."""
    import torch

    from posttrain.core.models import load_causal_lm, load_sequence_classifier
    from posttrain.training.lora import apply_lora

    with loading_unsharded():
        if task_type == "SEQ_CLS":
            full = load_sequence_classifier(base, {"trust_remote_code": trust_remote_code}, num_labels=num_labels,
                                            dtype=torch.float32)
        else:
            full = load_causal_lm(base, dtype=torch.float32, trust_remote_code=trust_remote_code)
    peft_model = apply_lora(full, lora, task_type=task_type)
    unexpected = peft_model.load_state_dict(trained, strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"merging LoRA: {len(unexpected)} trained tensors have no place in the reloaded model, "
                           f"e.g. {unexpected[:3]}")
    merged = peft_model.merge_and_unload()
    for name, param in merged.named_parameters():
        if name in dtypes and param.dtype != dtypes[name]:
            param.data = param.data.to(dtypes[name])
    return merged


def _task_type(model: Any) -> str:
    """The peft task the model was wrapped for (CAUSAL_LM unless said otherwise)."""
    config = getattr(model, "peft_config", {}).get("default")
    task = getattr(config, "task_type", None)
    return str(getattr(task, "value", task) or "CAUSAL_LM")


def _save_atomically(trainer: Any, out: Path, save: Callable[[Path], None]) -> None:
    tmp = out.with_name(out.name + TMP_SUFFIX)
    main = trainer.accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp)
        replace_dir(tmp, out)
    trainer.accelerator.wait_for_everyone()
