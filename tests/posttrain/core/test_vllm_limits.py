"""What vLLM 0.31 accepts of a model and a GPU (posttrain/core/vllm_limits.py), on the configs we ship and meet."""

from __future__ import annotations

from posttrain.core.tiny import TINY_DEFAULTS
from posttrain.core.vllm_limits import is_moe, mla_problem, moe_relayout

#: config.json's MLA sizes of the checkpoints the GPU recipes name (hub config files, as published).
DEEPSEEK_V3 = {"model_type": "deepseek_v3", "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
               "v_head_dim": 128, "n_routed_experts": 256}
DEEPSEEK_V2_LITE = {"model_type": "deepseek_v2", "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                    "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 64}


def test_real_deepseek_sizes_pass_and_the_cpu_tiny_models_do_not() -> None:
    assert mla_problem(DEEPSEEK_V3) is None and mla_problem(DEEPSEEK_V2_LITE) is None
    problem = mla_problem({"model_type": "deepseek_v3", **TINY_DEFAULTS})
    assert problem is not None
    assert "(16, 16, 32) is not among the sizes vLLM's MLA prefill takes" in problem
    assert "32 + 16 = 48 is not among the latent head sizes" in problem
    # One of the two is enough to fail.
    assert "prefill" not in mla_problem({**DEEPSEEK_V3, "kv_lora_rank": 128})
    assert "latent" not in mla_problem({**DEEPSEEK_V3, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32,
                                        "v_head_dim": 64, "kv_lora_rank": 480})
    assert mla_problem({**DEEPSEEK_V3, "qk_nope_head_dim": 64, "v_head_dim": 128, "kv_lora_rank": 256}) is None


def test_models_without_mla_have_nothing_to_check() -> None:
    assert mla_problem({"model_type": "qwen3_moe", "head_dim": 128, "num_experts": 128}) is None
    assert mla_problem({"model_type": "llava", "text_config": {"model_type": "llama"}}) is None
    assert mla_problem({"text_config": {**DEEPSEEK_V3, "kv_lora_rank": 64}}) is not None  # a multimodal wrapper


def test_which_configs_are_moe() -> None:
    assert is_moe(DEEPSEEK_V3) and is_moe({"num_local_experts": 8}) and is_moe({"text_config": {"num_experts": 4}})
    assert not is_moe({"model_type": "llama"}) and not is_moe({"num_experts": 1})


def test_blackwell_and_aiter_re_lay_moe_weights_hopper_and_ampere_do_not() -> None:
    for capability in ((9, 0), (8, 0), (8, 9)):
        assert moe_relayout(capability, env={}) is None
    for capability in ((10, 0), (10, 3), (12, 0)):
        assert "FlashInfer" in moe_relayout(capability, env={})
    assert moe_relayout(None, env={}) is None
    assert moe_relayout((9, 4), rocm=True, env={}) is None
    assert "AITER" in moe_relayout((9, 4), rocm=True, env={"VLLM_ROCM_USE_AITER": "1"})
