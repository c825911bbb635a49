"""What vLLM 0.31 (the top of the `vllm` extra's range) accepts of a model and a GPU, read from its released source,
so that posttrain says why before vLLM starts instead of failing deep inside its start-up or, worse, running wrong.

**MLA head sizes** (DeepSeek-V2/V3, Moonlight and the other models vLLM runs with multi-head latent attention):

- prefill: `(qk_nope_head_dim, qk_rope_head_dim, v_head_dim)` must be one FlashAttention's MLA prefill takes
  (`v1/attention/backends/mla/prefill/flash_attn.py`), the only prefill backend vLLM tries on Hopper and older GPUs
  (`prefill/selector.py`); Blackwell's others (TRT-LLM ragged, FlashInfer, TokenSpeed) take a subset of it. Anything
  else fails `LLM(...)` with "No valid MLA prefill backend found".
- decode: the latent cache's head size `kv_lora_rank + qk_rope_head_dim` must be 320, 512 or 576: every MLA
  backend's metadata checks it (`MLACommonMetadata.__post_init__` in `layers/attention/mla_attention.py`).

DeepSeek-V3's own sizes, (128, 64, 128) with `kv_lora_rank` 512, pass both; the tiny CPU model's (16, 16, 32) do not.

**MoE weights re-laid after loading.** vLLM 0.31 picks a bf16 MoE kernel per GPU
(`layers/fused_moe/oracle/unquantized.py`): FlashInfer's TRT-LLM or CUTLASS kernels first on Blackwell (compute
capability 10.x, 12.x), Triton on Hopper (FlashInfer is demoted there) and older GPUs, AITER on ROCm when
`VLLM_ROCM_USE_AITER=1`. FlashInfer and AITER re-lay the expert weights after loading (`convert_to_unquantized_kernel
_format`: halves swapped, block layout, shuffles). A server-mode weight sync goes through vLLM's layerwise reload,
which applies that step again; colocate mode (TRL 1.16 calls the engine's `load_weights` directly) writes checkpoint
tensors into kernel-layout memory: rollouts from scrambled experts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: (qk_nope_head_dim, qk_rope_head_dim, v_head_dim) that FlashAttention's MLA prefill takes (vLLM 0.31).
MLA_PREFILL_SIZES: tuple[tuple[int, int, int], ...] = ((128, 64, 128), (192, 64, 256), (64, 64, 128), (256, 0, 256))
#: kv_lora_rank + qk_rope_head_dim: the latent head sizes every MLA backend's metadata accepts (vLLM 0.31).
MLA_HEAD_SIZES: tuple[int, ...] = (320, 512, 576)
#: Compute-capability majors whose bf16 MoE kernel (FlashInfer) re-lays expert weights after loading (vLLM 0.31).
RELAYOUT_CAPABILITIES: tuple[int, ...] = (10, 12)
#: Config keys that hold an MoE's routed-expert count.
EXPERT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def mla_problem(config: Mapping[str, Any]) -> str | None:
    """Why vLLM 0.31 cannot build this model's MLA attention (a config.json as a dict), or None when it can (or the
    model has no MLA)."""
    cfg = _text_config(config)
    rank, rope = cfg.get("kv_lora_rank"), cfg.get("qk_rope_head_dim")
    if not isinstance(rank, int) or not isinstance(rope, int):
        return None
    sizes = (cfg.get("qk_nope_head_dim"), rope, cfg.get("v_head_dim"))
    problems = []
    if sizes not in MLA_PREFILL_SIZES:
        problems.append(f"(qk_nope_head_dim, qk_rope_head_dim, v_head_dim) = {sizes} is not among the sizes vLLM's "
                        f"MLA prefill takes, {', '.join(map(str, MLA_PREFILL_SIZES))}")
    if rank + rope not in MLA_HEAD_SIZES:
        problems.append(f"kv_lora_rank + qk_rope_head_dim = {rank} + {rope} = {rank + rope} is not among the latent "
                        f"head sizes its MLA backends take, {', '.join(map(str, MLA_HEAD_SIZES))}")
    return "; ".join(problems) or None


def is_moe(config: Mapping[str, Any]) -> bool:
    """Whether a config.json (as a dict) declares routed experts."""
    cfg = _text_config(config)
    return any(isinstance(cfg.get(k), int) and cfg[k] > 1 for k in EXPERT_KEYS)


def moe_relayout(capability: tuple[int, int] | None, rocm: bool = False,
                 env: Mapping[str, str] | None = None) -> str | None:
    """Which bf16 MoE kernel vLLM 0.31 picks on this GPU and re-lays expert weights for, or None (Triton: loaded as
    is). `capability`: CUDA's (major, minor); `rocm`: an AMD GPU, where `VLLM_ROCM_USE_AITER` in `env` decides."""
    env = os.environ if env is None else env
    if rocm:
        if env.get("VLLM_ROCM_USE_AITER", "").lower() in ("1", "true"):
            return "AITER's MoE kernel (ROCm, VLLM_ROCM_USE_AITER=1) shuffles the expert weights after loading"
        return None
    if capability is not None and capability[0] in RELAYOUT_CAPABILITIES:
        return (f"on compute capability {capability[0]}.{capability[1]} vLLM runs bf16 MoE layers with FlashInfer's "
                "kernels, which re-lay the expert weights after loading")
    return None


def current_gpu() -> tuple[tuple[int, int] | None, bool]:
    """(compute capability of GPU 0 or None, whether it is an AMD GPU)."""
    import torch

    if not torch.cuda.is_available():
        return None, False
    return tuple(torch.cuda.get_device_capability(0)), torch.version.hip is not None  # type: ignore[return-value]


def read_config(name_or_path: str, **hub: Any) -> dict[str, Any] | None:
    """A model's config.json as a dict (a local folder, or the hub's when reachable; no remote code runs), None
    when it cannot be read."""
    from transformers import PreTrainedConfig

    try:
        return PreTrainedConfig.get_config_dict(name_or_path, **hub)[0]
    except (OSError, ValueError):
        return None
