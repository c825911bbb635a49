"""What vLLM's weight loaders accept, as rules a test can run without vLLM.

Read from vLLM 0.31.0 (the wheel on PyPI, `vllm/_version.py`: 0.31.0, commit db9527a46), the newest release
in TRL 1.16's supported range 0.22-0.31 (`trl/import_utils.py`) and the one `posttrain[vllm]` resolves to:

- `vllm/model_executor/models/deepseek_v2.py` (DeepSeek-V2/V3, and GLM-MoE-DSA): `DeepseekV2Model.load_weights`
  is hand-written. `stacked_params_mapping` folds `gate_proj`/`up_proj` into `gate_up_proj` (dense MLPs and
  shared experts) and `q_a_proj`/`kv_a_proj_with_mqa` into `fused_qkv_a_proj` (only when `q_lora_rank` is
  set). Experts go through `fused_moe_make_expert_params_mapping(ckpt_gate_proj_name="gate_proj",
  "down_proj", "up_proj")`: only per-expert names `experts.{i}.{gate_proj|up_proj|down_proj}.` map; a fused
  `experts.gate_up_proj` falls through to `params_dict[name]`, a KeyError. Anything else must be a parameter
  name. `DeepseekV2MoE` has `gate.e_score_correction_bias` (fp32) only when `config.topk_method ==
  "noaux_tc"` and routes with `config.scoring_func` (default softmax); `DeepseekV2DecoderLayer` is MoE when
  `layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0`.
- `qwen3_moe.py`, `qwen2_moe.py`, `mixtral.py`, `olmoe.py`: `AutoWeightsLoader` with `hf_to_vllm_mapper`
  (`orig_to_new_stacked`: q/k/v -> `qkv_proj`; Qwen's `mlp.gate_proj/up_proj` and
  `shared_expert.gate_proj/up_proj` -> `gate_up_proj`); experts through `MoERunner.load_weights` ->
  `RoutedExperts.load_weights` (`vllm/model_executor/layers/fused_moe/routed_experts.py`,
  `build_expert_params_mapping`): per-expert `experts.{i}.{gate}.` / `{up}` -> `w13` (shards w1, w3),
  `{down}` -> `w2`, with checkpoint names `gate_proj/down_proj/up_proj` (Mixtral: `ckpt_names=("w1", "w2",
  "w3")`, under `block_sparse_moe`). Its `include_fused` entries also take fused 3-D tensors in 0.31, but
  older releases and DeepSeek's loader do not: the rules below accept per-expert tensors only.

- `deepseek_mtp.py` (the `mtp` speculative method's drafter for DeepSeek-V3): `DeepSeekMTP.load_weights` takes only
  the MTP layers' names (`model.layers.{N}.`, N >= num_hidden_layers, `get_spec_layer_idx_from_weight_name`),
  keeps `enorm`, `hnorm`, `eh_proj` and `shared_head` where they are and moves the rest under
  `model.layers.{N}.mtp_block.` (a `DeepseekV2DecoderLayer`, MoE from `first_k_dense_replace` on); then the same
  stacked and expert mappings. Its embedding and `shared_head.head` are the target model's, shared at load
  (`v1/spec_decode/llm_base_proposer.py`: `_maybe_share_embeddings`, `_maybe_share_lm_head`).

`VLLMModel.for_config(config)` lists the parameters vLLM builds for a config (tensor parallel 1, no quantisation,
experts as `...experts.w13_weight` (E, 2I, H) and `w2_weight` (E, H, I)); `load()` routes a sent (name, shape)
the way those loaders do, and `missing()` names what a full sync left unloaded.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

EXPERT = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<id>\d+)\.(?P<proj>\w+)\.weight$")


@dataclass
class VLLMModel:
    family: str
    params: dict[str, tuple[int, ...]]
    #: (vLLM parameter substring, checkpoint substring): checkpoint shards folded into one parameter.
    stacked: list[tuple[str, str]]
    #: Checkpoint names of an expert's gate, down and up projections.
    expert_names: tuple[str, str, str] = ("gate_proj", "down_proj", "up_proj")
    num_hidden_layers: int = 0
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    experts: dict[str, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))
    loaded: set[str] = field(default_factory=set)

    @classmethod
    def for_config(cls, config: Any) -> VLLMModel:
        builder = {"deepseek_v3": _deepseek, "deepseek_v2": _deepseek, "qwen3_moe": _qwen_moe,
                   "qwen2_moe": _qwen_moe, "mixtral": _mixtral, "olmoe": _olmoe}[config.model_type]
        return builder(config)

    def load(self, name: str, shape: tuple[int, ...]) -> None:
        """Route one sent tensor as vLLM's loader would; an AssertionError says what vLLM would do instead."""
        if "rotary_emb.inv_freq" in name:
            return
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        if self.family == "deepseek" and layer and int(layer.group(1)) >= self.num_hidden_layers:
            return  # MTP layers: skipped by the main model's loader (get_spec_layer_idx_from_weight_name)
        if self.family == "deepseek_mtp":
            if not layer or int(layer.group(1)) < self.num_hidden_layers:
                return  # not an MTP layer's: the drafter's loader skips it
            if not any(own in name for own in MTP_OWN):
                name = name.replace(layer.group(0), layer.group(0) + "mtp_block.", 1)
        expert = EXPERT.match(name)
        if ".experts." in name and expert is None:
            raise AssertionError(f"{name} {shape}: not a per-expert name; vLLM's expert mapping has no entry "
                                 f"(DeepSeek: KeyError in params_dict)")
        if expert is not None:
            return self._load_expert(name, expert, shape)
        for param_sub, ckpt_sub in self.stacked:
            if ckpt_sub in name and (target := name.replace(ckpt_sub, param_sub)) in self.params:
                want = self.params[target]
                assert shape[1:] == want[1:], f"{name} {shape}: shard of {target} {want}"
                self.rows[target] += shape[0]
                return
        assert name in self.params, f"{name}: vLLM's {self.family} model has no such parameter"
        assert shape == self.params[name], f"{name}: sent {shape}, vLLM holds {self.params[name]}"
        assert name not in self.loaded, f"{name} sent twice"
        self.loaded.add(name)

    def _load_expert(self, name: str, m: re.Match, shape: tuple[int, ...]) -> None:
        gate, down, up = self.expert_names
        proj, eid = m.group("proj"), int(m.group("id"))
        assert proj in (gate, down, up), f"{name}: expert projection {proj!r} is not one of {self.expert_names}"
        param = f"{m.group('prefix')}.{'w2' if proj == down else 'w13'}_weight"
        assert param in self.params, f"{name}: no MoE layer {m.group('prefix')} in vLLM's model"
        n, a, b = self.params[param]
        assert eid < n, f"{name}: expert {eid} of {n}"
        want = (a, b) if proj == down else (a // 2, b)
        assert shape == want, f"{name}: sent {shape}, one expert's shard of {param} is {want}"
        key = (eid, {gate: "w1", up: "w3", down: "w2"}[proj])
        assert key not in self.experts[param], f"{name} sent twice"
        self.experts[param].add(key)

    def missing(self) -> list[str]:
        """vLLM parameters a sync left (partly) unloaded."""
        out = []
        for name, shape in self.params.items():
            if name.endswith(("w13_weight", "w2_weight")):
                shards = ("w2",) if name.endswith("w2_weight") else ("w1", "w3")
                want = {(e, s) for e in range(shape[0]) for s in shards}
                if self.experts[name] != want:
                    out.append(f"{name}: {len(want - self.experts[name])} expert shards")
            elif any(p in name for p, _ in self.stacked) and name not in self.loaded:
                if self.rows[name] != shape[0]:
                    out.append(f"{name}: {self.rows[name]} of {shape[0]} rows")
            elif name not in self.loaded:
                out.append(name)
        return out


def _common(config: Any, params: dict[str, tuple[int, ...]]) -> None:
    h, v = config.hidden_size, config.vocab_size
    params["model.embed_tokens.weight"] = (v, h)
    params["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        params["lm_head.weight"] = (v, h)
    for i in range(config.num_hidden_layers):
        params[f"model.layers.{i}.input_layernorm.weight"] = (h,)
        params[f"model.layers.{i}.post_attention_layernorm.weight"] = (h,)


def _experts(params: dict[str, tuple[int, ...]], prefix: str, n: int, inter: int, h: int) -> None:
    params[f"{prefix}.experts.w13_weight"] = (n, 2 * inter, h)
    params[f"{prefix}.experts.w2_weight"] = (n, h, inter)


def _mlp(params: dict[str, tuple[int, ...]], prefix: str, inter: int, h: int) -> None:
    params[f"{prefix}.gate_up_proj.weight"] = (2 * inter, h)
    params[f"{prefix}.down_proj.weight"] = (h, inter)


def _qkv(params: dict[str, tuple[int, ...]], p: str, config: Any, head_dim: int, bias: bool = False) -> None:
    rows = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
    params[f"{p}.self_attn.qkv_proj.weight"] = (rows, config.hidden_size)
    if bias:
        params[f"{p}.self_attn.qkv_proj.bias"] = (rows,)
    params[f"{p}.self_attn.o_proj.weight"] = (config.hidden_size, config.num_attention_heads * head_dim)


QKV = [("qkv_proj", "q_proj"), ("qkv_proj", "k_proj"), ("qkv_proj", "v_proj")]


def _deepseek(c: Any) -> VLLMModel:
    params: dict[str, tuple[int, ...]] = {}
    _common(c, params)
    for i in range(c.num_hidden_layers):
        _deepseek_layer(params, f"model.layers.{i}", i, c)
    return VLLMModel("deepseek", params, DEEPSEEK_STACKED, num_hidden_layers=c.num_hidden_layers)


def deepseek_mtp(c: Any) -> VLLMModel:
    """The parameters of vLLM's MTP drafter for a DeepSeek-V3 config with `num_nextn_predict_layers` depths."""
    params: dict[str, tuple[int, ...]] = {}
    h = c.hidden_size
    for k in range(c.num_nextn_predict_layers):
        i = c.num_hidden_layers + k
        p = f"model.layers.{i}"
        params.update({f"{p}.enorm.weight": (h,), f"{p}.hnorm.weight": (h,), f"{p}.eh_proj.weight": (h, 2 * h),
                       f"{p}.shared_head.norm.weight": (h,), f"{p}.mtp_block.input_layernorm.weight": (h,),
                       f"{p}.mtp_block.post_attention_layernorm.weight": (h,)})
        _deepseek_layer(params, f"{p}.mtp_block", i, c)
    return VLLMModel("deepseek_mtp", params, DEEPSEEK_STACKED, num_hidden_layers=c.num_hidden_layers)


#: What the drafter keeps at the MTP layer's top level; the rest is its decoder block's (`_rewrite_spec_layer_name`).
MTP_OWN = ("enorm", "hnorm", "eh_proj", "shared_head")
DEEPSEEK_STACKED = [("gate_up_proj", "gate_proj"), ("gate_up_proj", "up_proj"),
                    ("fused_qkv_a_proj", "q_a_proj"), ("fused_qkv_a_proj", "kv_a_proj_with_mqa")]


def _deepseek_layer(params: dict[str, tuple[int, ...]], p: str, i: int, c: Any) -> None:
    h, nh, rope, nope = c.hidden_size, c.num_attention_heads, c.qk_rope_head_dim, c.qk_nope_head_dim
    if c.q_lora_rank is not None:
        params[f"{p}.self_attn.fused_qkv_a_proj.weight"] = (c.q_lora_rank + c.kv_lora_rank + rope, h)
        params[f"{p}.self_attn.q_a_layernorm.weight"] = (c.q_lora_rank,)
        params[f"{p}.self_attn.q_b_proj.weight"] = (nh * (nope + rope), c.q_lora_rank)
    else:
        params[f"{p}.self_attn.q_proj.weight"] = (nh * (nope + rope), h)
        params[f"{p}.self_attn.kv_a_proj_with_mqa.weight"] = (c.kv_lora_rank + rope, h)
    params[f"{p}.self_attn.kv_a_layernorm.weight"] = (c.kv_lora_rank,)
    params[f"{p}.self_attn.kv_b_proj.weight"] = (nh * (nope + c.v_head_dim), c.kv_lora_rank)
    params[f"{p}.self_attn.o_proj.weight"] = (h, nh * c.v_head_dim)
    if i >= c.first_k_dense_replace and i % getattr(c, "moe_layer_freq", 1) == 0:
        params[f"{p}.mlp.gate.weight"] = (c.n_routed_experts, h)
        if getattr(c, "topk_method", None) == "noaux_tc":
            params[f"{p}.mlp.gate.e_score_correction_bias"] = (c.n_routed_experts,)
        _experts(params, f"{p}.mlp", c.n_routed_experts, c.moe_intermediate_size, h)
        if c.n_shared_experts:
            _mlp(params, f"{p}.mlp.shared_experts", c.moe_intermediate_size * c.n_shared_experts, h)
    else:
        _mlp(params, f"{p}.mlp", c.intermediate_size, h)


def _qwen_moe(c: Any) -> VLLMModel:
    params: dict[str, tuple[int, ...]] = {}
    _common(c, params)
    h = c.hidden_size
    head_dim = getattr(c, "head_dim", None) or h // c.num_attention_heads
    qwen3 = c.model_type == "qwen3_moe"
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        _qkv(params, p, c, head_dim, bias=not qwen3 or bool(getattr(c, "attention_bias", False)))
        if qwen3:
            params[f"{p}.self_attn.q_norm.weight"] = (head_dim,)
            params[f"{p}.self_attn.k_norm.weight"] = (head_dim,)
        sparse = (i not in (getattr(c, "mlp_only_layers", None) or [])
                  and c.num_experts > 0 and (i + 1) % c.decoder_sparse_step == 0)
        if sparse:
            params[f"{p}.mlp.gate.weight"] = (c.num_experts, h)
            _experts(params, f"{p}.mlp", c.num_experts, c.moe_intermediate_size, h)
            if getattr(c, "shared_expert_intermediate_size", 0):
                _mlp(params, f"{p}.mlp.shared_expert", c.shared_expert_intermediate_size, h)
                params[f"{p}.mlp.shared_expert_gate.weight"] = (1, h)
        else:
            _mlp(params, f"{p}.mlp", c.intermediate_size, h)
    stacked = [*QKV, (".mlp.gate_up_proj", ".mlp.gate_proj"), (".mlp.gate_up_proj", ".mlp.up_proj"),
               (".shared_expert.gate_up_proj", ".shared_expert.gate_proj"),
               (".shared_expert.gate_up_proj", ".shared_expert.up_proj")]
    return VLLMModel(c.model_type, params, stacked)


def _mixtral(c: Any) -> VLLMModel:
    params: dict[str, tuple[int, ...]] = {}
    _common(c, params)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        _qkv(params, p, c, head_dim)
        params[f"{p}.block_sparse_moe.gate.weight"] = (c.num_local_experts, c.hidden_size)
        _experts(params, f"{p}.block_sparse_moe", c.num_local_experts, c.intermediate_size, c.hidden_size)
    return VLLMModel("mixtral", params, list(QKV), expert_names=("w1", "w2", "w3"))


def _olmoe(c: Any) -> VLLMModel:
    params: dict[str, tuple[int, ...]] = {}
    _common(c, params)
    head_dim = c.hidden_size // c.num_attention_heads
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        _qkv(params, p, c, head_dim)
        params[f"{p}.self_attn.q_norm.weight"] = (c.num_attention_heads * head_dim,)
        params[f"{p}.self_attn.k_norm.weight"] = (c.num_key_value_heads * head_dim,)
        params[f"{p}.mlp.gate.weight"] = (c.num_experts, c.hidden_size)
        _experts(params, f"{p}.mlp", c.num_experts, c.intermediate_size, c.hidden_size)
    return VLLMModel("olmoe", params, list(QKV))


def check_draft_sync(config: Any, sent: list[tuple[str, Any]]) -> VLLMModel:
    """Load every sent tensor into vLLM's MTP drafter for `config`; fail on a rejected one or on anything left out."""
    model = deepseek_mtp(config)
    for name, tensor in sent:
        model.load(name, tuple(tensor.shape))
    assert not model.missing(), f"drafter parameters the sync never loaded: {model.missing()}"
    return model


def check_sync(config: Any, sent: list[tuple[str, Any]]) -> VLLMModel:
    """Load every sent tensor into the vLLM model of `config`; fail on a rejected one or on anything left unloaded."""
    model = VLLMModel.for_config(config)
    for name, tensor in sent:
        model.load(name, tuple(tensor.shape))
    assert not model.missing(), f"vLLM parameters the sync never loaded: {model.missing()}"
    return model
