"""The MTP module (posttrain/core/mtp.py): shapes, loss, DeepSeek-V3's checkpoint layout, save -> reload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from posttrain.core.models import load_causal_lm
from posttrain.core.mtp import MTPLayer, attach_mtp, has_mtp, mtp_hidden_states, mtp_layers, mtp_loss
from posttrain.training.trainer import restore_model_weights


@pytest.fixture(scope="module")
def tok() -> Any:
    from data_pipelines.tasks.arithmetic import corpus
    from posttrain.core.tiny import train_tokenizer

    return train_tokenizer(corpus(), 512)


def tiny(tok: Any, depth: int = 1) -> Any:
    from posttrain.core.tiny import build_tiny_model

    return build_tiny_model(tok, {"num_nextn_predict_layers": depth}, seed=0)


def test_tiny_model_builds_the_module_where_deepseek_v3_puts_it(tok: Any) -> None:
    model = tiny(tok, depth=2)
    n = model.config.num_hidden_layers
    layers = mtp_layers(model)
    assert [m.self_attn.layer_idx for m in layers] == [n, n + 1]
    assert len(model.model.layers) == n + 2 and model.config.num_nextn_predict_layers == 2
    names = {k for k, _ in model.named_parameters() if k.startswith(f"model.layers.{n}.")}
    for part in ("eh_proj.weight", "enorm.weight", "hnorm.weight", "shared_head.norm.weight",
                 "self_attn.kv_b_proj.weight", "mlp.experts.gate_up_proj", "mlp.gate.weight", "input_layernorm.weight"):
        assert f"model.layers.{n}.{part}" in names
    assert layers[0].eh_proj.weight.shape == (128, 256)
    assert not has_mtp(tiny(tok, depth=0))


def test_the_main_model_computes_the_same_with_or_without_the_module(tok: Any) -> None:
    plain, with_mtp = tiny(tok, depth=0), tiny(tok, depth=1)
    ids = torch.randint(10, 200, (2, 9))
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, with_mtp(input_ids=ids).logits)


def test_mtp_hidden_states_are_causal_and_shaped_like_the_input(tok: Any) -> None:
    model = tiny(tok, depth=2).eval()
    ids = torch.randint(10, 200, (2, 12))
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        h1, h2 = mtp_hidden_states(model, hidden, ids)
        # Depth k at position i reads tokens up to i + k: changing token 8 leaves depth 1 at positions < 7
        # and depth 2 at positions < 6 unchanged.
        other = ids.clone()
        other[:, 8] = (other[:, 8] + 1) % 200
        g1, g2 = mtp_hidden_states(model, model.model(input_ids=other).last_hidden_state, other)
    assert h1.shape == h2.shape == (2, 12, 128)
    assert torch.allclose(h1[:, :7], g1[:, :7], atol=1e-6) and not torch.allclose(h1[:, 7], g1[:, 7])
    assert torch.allclose(h2[:, :6], g2[:, :6], atol=1e-6) and not torch.allclose(h2[:, 6], g2[:, 6])


def test_mtp_loss_is_the_mean_over_depths_of_the_cross_entropy_of_tokens_k_plus_one_ahead(tok: Any) -> None:
    model = tiny(tok, depth=2)
    ids = torch.randint(10, 200, (3, 10))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt: no targets there
    hidden = model.model(input_ids=ids).last_hidden_state
    loss, stats = mtp_loss(model, hidden, ids, labels)
    head = model.get_output_embeddings()
    expected = []
    for k, (layer, h) in enumerate(zip(mtp_layers(model), mtp_hidden_states(model, hidden, ids), strict=True), 1):
        logits = layer.logits(h[:, : 10 - k - 1], head)  # position i predicts token i + k + 1
        target = labels[:, k + 1:]
        expected.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert [s["tokens"] for s in stats] == [3 * 6, 3 * 6]  # targets 4..9 exist for both depths' positions
    loss.backward()
    assert mtp_layers(model)[0].eh_proj.weight.grad is not None
    assert model.get_output_embeddings().weight.grad is not None  # the head is shared, and trained by MTP


def test_save_then_load_keeps_the_module_in_deepseek_v3_layout(tok: Any, tmp_path: Path) -> None:
    model = tiny(tok)
    with torch.no_grad():
        mtp_layers(model)[0].eh_proj.weight.mul_(3)  # not the initialisation
    model.save_pretrained(tmp_path)
    n = model.config.num_hidden_layers
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        head = f.get_tensor(f"model.layers.{n}.shared_head.head.weight")
    for part in ("eh_proj.weight", "enorm.weight", "hnorm.weight", "shared_head.norm.weight",
                 "shared_head.head.weight", "mlp.experts.0.gate_proj.weight", "self_attn.q_proj.weight"):
        assert f"model.layers.{n}.{part}" in keys
    assert f"model.layers.{n}.embed_tokens.weight" not in keys  # shared with the main model
    assert torch.equal(head, model.lm_head.weight)
    assert json.loads((tmp_path / "config.json").read_text())["num_nextn_predict_layers"] == 1
    loaded = load_causal_lm(str(tmp_path))
    assert has_mtp(loaded)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_checkpoint_written_in_deepseek_v3_layout_is_restored(tok: Any, tmp_path: Path) -> None:
    """DeepSeek-V3's own files: MTP layer N in its own shard, per-expert weights, a repeated embedding."""
    main = tiny(tok, depth=0)
    main.config.num_nextn_predict_layers = 1
    main.save_pretrained(tmp_path)
    n = main.config.num_hidden_layers
    reference = MTPLayer(main.config, n)
    gen = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in reference.state_dict().items():
        if key == "mlp.experts.gate_up_proj":
            gate, up = value.chunk(2, dim=1)
            for e in range(value.shape[0]):
                tensors[f"mlp.experts.{e}.gate_proj.weight"] = torch.randn(gate[e].shape, generator=gen)
                tensors[f"mlp.experts.{e}.up_proj.weight"] = torch.randn(up[e].shape, generator=gen)
        elif key == "mlp.experts.down_proj":
            for e in range(value.shape[0]):
                tensors[f"mlp.experts.{e}.down_proj.weight"] = torch.randn(value[e].shape, generator=gen)
        else:
            tensors[key] = torch.randn(value.shape, generator=gen)
    tensors["embed_tokens.weight"] = main.get_input_embeddings().weight.detach().clone()
    tensors["shared_head.head.weight"] = main.lm_head.weight.detach().clone()
    mtp_file = "model-00002-of-00002.safetensors"
    save_file({f"model.layers.{n}.{k}": v.contiguous() for k, v in tensors.items()}, str(tmp_path / mtp_file))
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00001-of-00002.safetensors")
    with safe_open(str(tmp_path / "model-00001-of-00002.safetensors"), "pt") as f:
        weight_map = dict.fromkeys(f.keys(), "model-00001-of-00002.safetensors")
    weight_map.update({f"model.layers.{n}.{k}": mtp_file for k in tensors})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    model = load_causal_lm(str(tmp_path))
    (layer,) = mtp_layers(model)
    assert torch.equal(layer.eh_proj.weight, tensors["eh_proj.weight"])
    assert torch.equal(layer.shared_head.norm.weight, tensors["shared_head.norm.weight"])
    assert torch.equal(layer.self_attn.kv_b_proj.weight, tensors["self_attn.kv_b_proj.weight"])
    assert torch.equal(layer.mlp.experts.gate_up_proj[3],
                       torch.cat([tensors["mlp.experts.3.gate_proj.weight"], tensors["mlp.experts.3.up_proj.weight"]]))
    assert torch.equal(layer.mlp.experts.down_proj[5], tensors["mlp.experts.5.down_proj.weight"])
    assert torch.equal(layer.mlp.gate.e_score_correction_bias, tensors["mlp.gate.e_score_correction_bias"])


def test_a_config_without_the_weights_loads_without_mtp(tok: Any, tmp_path: Path) -> None:
    main = tiny(tok, depth=0)
    main.config.num_nextn_predict_layers = 1  # declared (DeepseekV3Config's default is 1), never saved
    main.save_pretrained(tmp_path)
    assert not has_mtp(load_causal_lm(str(tmp_path)))


def test_resuming_from_a_trainer_checkpoint_restores_the_module(tok: Any, tmp_path: Path) -> None:
    model = tiny(tok)
    model.save_pretrained(tmp_path)  # what Trainer writes in checkpoint-N/
    saved = {k: v.clone() for k, v in mtp_layers(model)[0].state_dict().items()}
    with torch.no_grad():
        for p in mtp_layers(model)[0].parameters():
            p.zero_()
    restore_model_weights(model, str(tmp_path))
    for key, value in mtp_layers(model)[0].state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_attach_keeps_the_models_dtype_and_the_routers_fp32(tok: Any) -> None:
    from posttrain.core.tiny import build_tiny_model

    model = build_tiny_model(tok, seed=0).to(torch.bfloat16)
    (layer,) = attach_mtp(model, 1)
    assert layer.eh_proj.weight.dtype == torch.bfloat16
    assert layer.mlp.gate.e_score_correction_bias.dtype == torch.float32
