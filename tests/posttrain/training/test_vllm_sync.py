"""What a GRPO weight sync sends to vLLM, checked against vLLM 0.31's loader rules (training/vllm_loaders.py).

vLLM is not installed here: the tests check the (name, tensor) stream, both from `vllm_weights` and through
TRL 1.16's own `VLLMGeneration.sync_weights` with the engine (colocate) or client (server) replaced by a recorder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from posttrain.core.models import load_causal_lm
from posttrain.core.run_folder import METRICS_FILE, ROLLOUT_LOGP_DIFF, ROLLOUT_LOGP_DIFF_MAX, append_jsonl
from posttrain.stages.base import StageContext
from posttrain.training.moe_balance import ExpertLoadTracker, MoEBalanceConfig
from posttrain.training.vllm_sync import (
    TRL_LOGP_DIFF,
    TRL_LOGP_DIFF_MAX,
    install_vllm_sync,
    record_logp_diff,
    vllm_weights,
)
from tests.posttrain.training.vllm_loaders import check_draft_sync, check_sync

SMALL = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 101, "tie_word_embeddings": False}
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen3_moe": {"moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2, "head_dim": 16},
    "qwen2_moe": {"moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2,
                  "shared_expert_intermediate_size": 48},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "olmoe": {"num_experts": 4, "num_experts_per_tok": 2, "eos_token_id": 100, "pad_token_id": 1},
}


def small_model(family: str) -> Any:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **SMALL, **FAMILIES[family]))


def shapes(sent: list[tuple[str, torch.Tensor]]) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(t.shape)) for n, t in sent]


@pytest.fixture
def tiny(tiny_base: Path) -> Any:
    """The tiny DeepSeek-V3 as the pipeline builds it, with router biases away from their zero start."""
    model = load_causal_lm(str(tiny_base))
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers[model.config.first_k_dense_replace:]):
            layer.mlp.gate.e_score_correction_bias.copy_(torch.linspace(-0.01, 0.01, 8) * (i + 1))
    return model


def test_tiny_deepseek_v3_sends_exactly_what_vllm_loads(tiny: Any, tmp_path: Path) -> None:
    sent = vllm_weights(tiny)
    check_sync(tiny.config, sent)  # every name accepted with its shape, every vLLM parameter loaded once
    names = dict(shapes(sent))
    cfg = tiny.config
    e, i, h = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
    assert names["model.layers.1.mlp.experts.7.gate_proj.weight"] == (i, h)
    assert names["model.layers.1.mlp.experts.7.down_proj.weight"] == (h, i)
    assert not any(n.endswith(("gate_up_proj", "experts.down_proj")) for n in names)
    assert len(sent) == len(names)  # nothing twice
    # The router biases come last, fp32, with the trainer's values.
    biases = [(n, t) for n, t in sent if n.endswith("e_score_correction_bias")]
    assert [n for n, _ in biases] == [f"model.layers.{k}.mlp.gate.e_score_correction_bias" for k in range(1, 4)]
    assert sent[-len(biases):] == biases
    for n, t in biases:
        assert t.dtype == torch.float32 and t.shape == (e,)
        assert torch.equal(t, tiny.get_buffer(n))
    # Values: exactly the tensors of the checkpoint save_pretrained writes (the layout vLLM loaded at start).
    tiny.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert sorted(names) == sorted(saved)
    for n, t in sent:
        assert torch.equal(t, saved[n]), n


def test_tiny_qwen3_moe_sends_exactly_what_vllm_loads() -> None:
    model = small_model("qwen3_moe")
    sent = vllm_weights(model)
    check_sync(model.config, sent)
    layer = [(n, s) for n, s in shapes(sent) if n.startswith("model.layers.1.")]
    experts = [(f"model.layers.1.mlp.experts.{k}.{p}.weight", (64, 32) if p == "down_proj" else (32, 64))
               for k in range(4) for p in ("gate_proj", "up_proj", "down_proj")]
    assert sorted(layer) == sorted([
        ("model.layers.1.input_layernorm.weight", (64,)),
        ("model.layers.1.post_attention_layernorm.weight", (64,)),
        ("model.layers.1.self_attn.q_proj.weight", (64, 64)),
        ("model.layers.1.self_attn.k_proj.weight", (32, 64)),
        ("model.layers.1.self_attn.v_proj.weight", (32, 64)),
        ("model.layers.1.self_attn.o_proj.weight", (64, 64)),
        ("model.layers.1.self_attn.q_norm.weight", (16,)),
        ("model.layers.1.self_attn.k_norm.weight", (16,)),
        ("model.layers.1.mlp.gate.weight", (4, 64)),
        *experts,
    ])
    fused = model.model.layers[1].mlp.experts.gate_up_proj
    got = dict(sent)
    assert torch.equal(got["model.layers.1.mlp.experts.2.gate_proj.weight"], fused[2, :32])
    assert torch.equal(got["model.layers.1.mlp.experts.2.up_proj.weight"], fused[2, 32:])


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral", "olmoe"])
def test_other_moe_families_send_what_their_vllm_loader_maps(family: str, tmp_path: Path) -> None:
    model = small_model(family)
    sent = vllm_weights(model)
    check_sync(model.config, sent)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert sorted(n for n, _ in sent) == sorted(saved)  # Mixtral: block_sparse_moe.experts.{i}.w1/w2/w3
    assert all(torch.equal(t, saved[n]) for n, t in sent)


def test_the_checker_rejects_what_trl_would_send_unconverted(tiny: Any) -> None:
    plain = [(n, p) for n, p in tiny.named_parameters()]
    with pytest.raises(AssertionError, match=r"experts\.gate_up_proj.*not a per-expert name"):
        check_sync(tiny.config, plain)
    # Without topk_method vLLM builds no correction bias (and would route with softmax): the bias has nowhere to go.
    cfg = type(tiny.config).from_dict({**tiny.config.to_dict(), "topk_method": None})
    with pytest.raises(AssertionError, match="e_score_correction_bias: vLLM's deepseek model has no such"):
        check_sync(cfg, vllm_weights(tiny))


# -- through TRL's own sync ---------------------------------------------------------------------------------


class Recorder:
    """Stands in for vLLM: the colocate engine's `load_weights` and the server client's `update_named_params`."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self.metadata: list[tuple[str, str, list[int]]] = []
        self.model = SimpleNamespace(load_weights=lambda pairs: self.loaded.extend((n, t.clone()) for n, t in pairs))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=self.model))))

    def update_named_params(self, metadata: list, named: Any) -> None:
        self.metadata = list(metadata)
        self.loaded = [(n, t.clone()) for n, t in named]

    def reset_prefix_cache(self) -> None:
        pass


def trl_generation(model: Any, mode: str, recorder: Recorder | None = None) -> tuple[Any, Recorder]:
    """TRL 1.16's VLLMGeneration around `model`, its vLLM side a Recorder, with posttrain's sync installed."""
    from accelerate import Accelerator
    from trl.distributed import DistributedBackend
    from trl.generation.vllm_generation import VLLMGeneration

    gen = VLLMGeneration.__new__(VLLMGeneration)  # __init__ would start vLLM
    accelerator = Accelerator(cpu=True)
    recorder = recorder or Recorder()
    gen.model, gen.accelerator, gen._dist, gen.mode = model, accelerator, DistributedBackend(accelerator), mode
    gen.enable_sleep_mode, gen._weight_metadata = False, None
    gen.llm = gen.vllm_client = recorder
    install_vllm_sync(gen)
    return gen, recorder


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_trl_sync_sends_the_converted_stream_and_the_biases_after_each_step(
    mode: str, tiny: Any, tiny_base: Path
) -> None:
    gen, vllm = trl_generation(tiny, mode)
    gen.sync_weights()
    expected = [(n, t.clone()) for n, t in vllm_weights(tiny)]  # the biases alias the live buffers
    assert shapes(vllm.loaded) == shapes(expected)
    check_sync(tiny.config, vllm.loaded)
    if mode == "server":  # announced before the broadcast, in the same order
        assert vllm.metadata == [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in expected]
    # An optimizer step's bias update (the real tracker, real loads) reaches vLLM at the next sync.
    tracker = ExpertLoadTracker(tiny, MoEBalanceConfig(bias_update_speed=0.01, seq_aux_loss_coef=0))
    tiny(input_ids=torch.randint(0, 100, (2, 12)))
    tracker.end_step()
    tracker.remove()
    gen.sync_weights()
    sent = dict(vllm.loaded)
    for k in range(1, 4):
        name = f"model.layers.{k}.mlp.gate.e_score_correction_bias"
        assert torch.equal(sent[name], tiny.get_buffer(name))
        assert not torch.equal(sent[name], dict(expected)[name])  # moved since the first sync
        assert torch.equal(gen.last_synced_biases[name], sent[name])  # kept for make gpu-check


def test_lora_sync_sends_merged_weights_under_base_names(tiny: Any) -> None:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj", "o_proj"], init_lora_weights=False))
    gen, vllm = trl_generation(peft_model, "colocate")
    gen.sync_weights()
    check_sync(tiny.config, vllm.loaded)
    merged = dict(vllm.loaded)["model.layers.2.self_attn.q_proj.weight"]
    peft_model.merge_adapter()
    assert torch.equal(merged, peft_model.get_base_model().model.layers[2].self_attn.q_proj.weight.detach())
    peft_model.unmerge_adapter()
    assert not torch.equal(merged, peft_model.get_base_model().model.layers[2].self_attn.q_proj.weight.detach())


class ServerRecorder(Recorder):
    """Stands in for TRL's `VLLMClient` of a rollout server and the server behind it: the HTTP calls in order, and
    what each weight update streamed. `update_named_params` opens and closes its own session unless one is open
    (`_updating_weights`), as TRL 1.16's does."""

    def __init__(self, drafts: str | None = "mtp") -> None:
        super().__init__()
        self.base_url = "http://10.0.0.7:8001"
        self.events: list[Any] = []
        self.updates: list[tuple[list, list[tuple[str, torch.Tensor]]]] = []
        self._updating_weights = False
        self.info = {"speculative_config": {"method": drafts, "num_speculative_tokens": 1} if drafts else None}

    def get_server_info(self) -> dict:
        return self.info

    def _post(self, url: str, **kwargs: Any) -> dict:
        self.events.append(url.removeprefix(self.base_url))
        return {}

    def _finish_weight_update(self) -> None:
        self._post(f"{self.base_url}/finish_weight_update")

    def update_named_params(self, metadata: list, named: Any) -> None:
        if not self._updating_weights:
            self._post(f"{self.base_url}/start_weight_update")
        sent = [(n, t.clone()) for n, t in named]
        self.events.append(("update_weights", len(sent)))
        self.updates.append((list(metadata), sent))
        if not self._updating_weights:
            self._finish_weight_update()


@pytest.fixture
def with_mtp(tiny_base: Path) -> Any:
    """The tiny DeepSeek-V3 with one MTP depth (layer 4 of model.layers), as the pipeline builds it."""
    from posttrain.core.models import load_tokenizer
    from posttrain.core.tiny import build_tiny_model

    return build_tiny_model(load_tokenizer(str(tiny_base)), {"num_nextn_predict_layers": 1})


def test_the_mtp_layers_go_to_the_servers_drafter_through_vllms_draft_update(with_mtp: Any) -> None:
    gen, server = trl_generation(with_mtp, "server", ServerRecorder())
    gen.posttrain_drafts = True  # setup_draft_sync: server mode, rollout.speculative, a policy with MTP layers
    gen.sync_weights()
    (_, main), (draft_meta, draft) = server.updates
    assert server.events == ["/start_weight_update", ("update_weights", len(main)), "/finish_weight_update",
                             "/start_draft_weight_update", ("update_weights", len(draft)), "/finish_weight_update"]
    mtp = "model.layers.4."
    check_sync(with_mtp.config, main)  # the main model gets everything of its own, nothing of the MTP layer
    assert not any(n.startswith(mtp) for n, _ in main)
    check_draft_sync(with_mtp.config, draft)  # the drafter every MTP tensor it loads, per expert, bias included
    assert {n for n, _ in draft} >= {f"{mtp}eh_proj.weight", f"{mtp}mlp.experts.7.up_proj.weight",
                                     f"{mtp}mlp.gate.e_score_correction_bias"}
    assert draft_meta == [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in draft]
    # A training step moves the MTP layer: the next sync brings the drafter along.
    layer = with_mtp.model.layers[4]
    with torch.no_grad():
        layer.eh_proj.weight.add_(0.5)
    gen.sync_weights()
    sent = dict(server.updates[-1][1])
    assert torch.equal(sent[f"{mtp}eh_proj.weight"], layer.eh_proj.weight)
    assert torch.equal(sent[f"{mtp}mlp.experts.2.gate_proj.weight"],
                       layer.mlp.experts.gate_up_proj[2, :with_mtp.config.moe_intermediate_size])


def test_a_server_without_the_mtp_drafter_gets_no_draft_update_and_a_warning(with_mtp: Any, caplog) -> None:
    gen, server = trl_generation(with_mtp, "server", ServerRecorder(drafts=None))
    gen.posttrain_drafts = True
    with caplog.at_level(logging.WARNING, logger="posttrain.vllm"):
        gen.sync_weights()
        gen.sync_weights()
    assert "/start_draft_weight_update" not in server.events and len(server.updates) == 2
    assert len([r for r in caplog.records if "drafts with nothing" in r.getMessage()]) == 1


def test_trls_client_lets_one_session_span_an_update(with_mtp: Any) -> None:
    """What `sync_draft` relies on in the pinned TRL's VLLMClient: `_post`, `_finish_weight_update`, and an
    `update_named_params` that leaves an open session (`_updating_weights`) to its caller."""
    import inspect

    from trl.generation.vllm_client import VLLMClient

    assert callable(VLLMClient._post) and callable(VLLMClient._finish_weight_update)
    source = inspect.getsource(VLLMClient.update_named_params)
    assert source.count("if not self._updating_weights:") == 2


def test_the_drafter_is_kept_in_sync_only_behind_a_rollout_server(with_mtp: Any, tiny: Any, caplog) -> None:
    from posttrain.core.generation import SpeculativeSpec
    from posttrain.training.vllm_sync import DraftAcceptanceCallback, VLLMSyncMixin

    class Trainer:
        def __init__(self, generation: Any) -> None:
            self.vllm_generation, self.callbacks = generation, []

        def add_callback(self, callback: Any) -> None:
            self.callbacks.append(callback)

    class Synced(VLLMSyncMixin, Trainer):
        pass

    server, _ = trl_generation(with_mtp, "server", ServerRecorder())
    trainer = Synced(server)
    assert trainer.setup_draft_sync(SpeculativeSpec()) and server.posttrain_drafts
    assert any(isinstance(c, DraftAcceptanceCallback) for c in trainer.callbacks)
    with caplog.at_level(logging.WARNING, logger="posttrain.vllm"):
        assert not Synced(trl_generation(with_mtp, "colocate")[0]).setup_draft_sync(SpeculativeSpec())
        assert not Synced(trl_generation(tiny, "server", ServerRecorder())[0]).setup_draft_sync(SpeculativeSpec())
    assert "colocated vLLM engine runs no drafter" in caplog.text and "no MTP module" in caplog.text
    assert not Synced(trl_generation(with_mtp, "server", ServerRecorder())[0]).setup_draft_sync(None)


def test_the_servers_draft_acceptance_is_logged_at_each_step() -> None:
    """vLLM's Prometheus counters (one sample per engine) from a real HTTP server on 127.0.0.1."""
    import http.server
    import threading

    from posttrain.core.run_folder import MTP_ACCEPTANCE
    from posttrain.training.vllm_sync import DraftAcceptanceCallback

    counts = {"drafted": (60, 40), "accepted": (45, 25)}

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            (d0, d1), (a0, a1) = counts["drafted"], counts["accepted"]
            body = "\n".join([
                "# HELP vllm:spec_decode_num_draft_tokens_total Number of draft tokens.",
                "# TYPE vllm:spec_decode_num_draft_tokens_total counter",
                f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="m"}} {d0}.0',
                f'vllm:spec_decode_num_draft_tokens_total{{engine="1",model_name="m"}} {d1}.0',
                f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="m"}} {a0}.0',
                f'vllm:spec_decode_num_accepted_tokens_total{{engine="1",model_name="m"}} {a1}.0',
                'vllm:num_requests_running{engine="0"} 3.0', ""]).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        callback = DraftAcceptanceCallback(f"http://127.0.0.1:{server.server_address[1]}")
        assert callback.last == (100, 70)  # where the run starts from
        counts.update(drafted=(160, 140), accepted=(105, 85))
        logs: dict[str, Any] = {"loss": 0.1}
        callback.on_log(None, None, None, logs=logs)
        assert logs[MTP_ACCEPTANCE] == pytest.approx((190 - 70) / (300 - 100))
        quiet: dict[str, Any] = {"loss": 0.1}  # nothing drafted since: nothing to say
        callback.on_log(None, None, None, logs=quiet)
        assert MTP_ACCEPTANCE not in quiet
    finally:
        server.shutdown()
        server.server_close()


# -- drift -------------------------------------------------------------------------------------------------


def test_the_sampling_logp_difference_is_logged_under_a_stable_key_and_warns(caplog) -> None:
    logs = {"loss": 0.1, TRL_LOGP_DIFF: 0.02, TRL_LOGP_DIFF_MAX: 0.4}
    with caplog.at_level(logging.WARNING, logger="posttrain.vllm"):
        record_logp_diff(logs, threshold=0.05)
    assert (logs[ROLLOUT_LOGP_DIFF], logs[ROLLOUT_LOGP_DIFF_MAX]) == (0.02, 0.4)
    assert not caplog.records
    high = {TRL_LOGP_DIFF: 0.3}
    with caplog.at_level(logging.WARNING, logger="posttrain.vllm"):
        record_logp_diff(high, threshold=0.05)
    assert high[ROLLOUT_LOGP_DIFF] == 0.3
    assert "drift" in caplog.text and "rollout.max_logp_diff" in caplog.text
    without = {"loss": 0.1}
    record_logp_diff(without, threshold=0.05)  # transformers rollouts: TRL measures nothing, nothing is added
    assert without == {"loss": 0.1}


def zero_reward(completions: list, **kwargs: Any) -> list[float]:
    return [0.0] * len(completions)


def test_trls_measured_difference_reaches_metrics_jsonl_under_the_stable_key(
    tmp_path: Path, tiny_base: Path, caplog
) -> None:
    """Through TRL's own GRPOTrainer.log: it adds its metrics after any mixin's log, so the key is set in on_log."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.core.models import load_tokenizer
    from posttrain.training.trainer import MetricsFileCallback
    from posttrain.training.vllm_sync import VLLMSyncMixin

    tok = load_tokenizer(str(tiny_base), padding_side="left")
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=4, report_to=[], bf16=False)
    trainer = type("Trainer", (VLLMSyncMixin, GRPOTrainer), {})(
        model=load_causal_lm(str(tiny_base)), reward_funcs=[zero_reward], args=args, processing_class=tok,
        train_dataset=Dataset.from_list([{"prompt": "Compute 1+2."}] * 4))
    trainer.logp_diff_callback.threshold = 0.1  # as the stage sets it from rollout.max_logp_diff
    rows: list[dict] = []
    trainer.add_callback(MetricsFileCallback(SimpleNamespace(append_metrics=rows.append, log=logging.getLogger("t"))))
    trainer.model.train()
    for mean, top in ((0.02, 0.3), (0.25, 2.0)):  # where TRL's _generate_and_score_completions puts them
        trainer._metrics["train"][TRL_LOGP_DIFF].append(mean)
        trainer._metrics["train"][TRL_LOGP_DIFF_MAX].append(top)
        with caplog.at_level(logging.WARNING, logger="posttrain.vllm"):
            trainer.log({"loss": 0.5})
    assert [(r[ROLLOUT_LOGP_DIFF], r[ROLLOUT_LOGP_DIFF_MAX]) for r in rows] == [(0.02, 0.3), (0.25, 2.0)]
    assert len([r for r in caplog.records if "drift" in r.getMessage()]) == 1  # only the step above 0.1


def test_the_stage_summarises_the_drift(tmp_path: Path) -> None:
    from posttrain.stages.grpo import _summary

    for step, (mean, top) in enumerate([(0.01, 0.2), (0.03, 0.9), (0.02, 0.5)], 1):
        append_jsonl(tmp_path / METRICS_FILE, {"step": step, "reward": 0.5, ROLLOUT_LOGP_DIFF: mean,
                                               ROLLOUT_LOGP_DIFF_MAX: top})
    ctx = StageContext(None, SimpleNamespace(name=tmp_path.name), tmp_path.parent, "", logging.getLogger("test"))
    out = _summary(ctx)  # type: ignore[arg-type]
    assert out["rollout_logp_diff_mean"] == 0.02 and out["rollout_logp_diff_max"] == 0.9


def test_the_sync_is_installed_only_where_vllm_generates(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRPO's trainer always carries the sync; it installs only on a trainer with TRL's vLLM generation."""
    from posttrain.training import vllm_sync
    from posttrain.training.grpo_trainer import GRPOTrainer
    from posttrain.training.vllm_sync import VLLMSyncMixin

    assert VLLMSyncMixin in GRPOTrainer.__mro__
    installed: list[Any] = []
    monkeypatch.setattr(vllm_sync, "install_vllm_sync", installed.append)
    monkeypatch.setattr(vllm_sync, "routing_buffers", lambda model: [])

    class Trainer:
        def __init__(self, generation: Any = None) -> None:
            self.callbacks: list[Any] = []
            if generation is not None:
                self.vllm_generation = generation

        def add_callback(self, callback: Any) -> None:
            self.callbacks.append(callback)

    class Synced(VLLMSyncMixin, Trainer):
        pass

    plain = Synced()
    assert installed == [] and [type(c).__name__ for c in plain.callbacks] == ["LogpDiffCallback"]
    generation = SimpleNamespace(model=None)
    Synced(generation)
    assert installed == [generation]
