"""The `vllm` generation backend: what it sends to vLLM's engine (a stand-in, tests/fake_vllm.py; vLLM needs a GPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrain.core.generation import GenerationError, GenerationSpec, SamplingParams, SpeculativeSpec
from posttrain.core.generation.vllm import VLLMGenerator, spec_decode_counts
from posttrain.core.tiny import BOS
from tests import fake_vllm

#: DeepSeek-V3's MLA sizes: what vLLM's prefill and decode backends take.
V3_SIZES = {"qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "kv_lora_rank": 512}


@pytest.fixture
def vllm_ready(tiny_base: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint's config with MLA sizes vLLM takes (the stand-in loads no weights), and its tokenizer
    adding a BOS as DeepSeek-V2-Lite-Chat's does (`add_bos_token`), while its chat template writes one too."""
    from transformers import AutoTokenizer

    out = tmp_path / "ckpt"
    shutil.copytree(tiny_base, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **V3_SIZES}))
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_bos_token = True
    tok.save_pretrained(out)
    return out


def test_chat_prompts_reach_vllm_as_token_ids_with_one_bos(vllm_ready: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    fake_vllm.install(monkeypatch)
    tok = AutoTokenizer.from_pretrained(vllm_ready)
    assert tok.chat_template.startswith("{{ bos_token }}")  # DeepSeek's templates put the BOS in the text
    gen = VLLMGenerator(str(vllm_ready), GenerationSpec(backend="vllm", chat=True))
    gen.generate(["Compute 1+2.", [{"role": "user", "content": "Compute 3+4."}]], n=2,
                 sampling=SamplingParams(max_new_tokens=4, seed=0))
    [engine] = fake_vllm.LLM.built
    bos = tok.convert_tokens_to_ids(BOS)
    for sent, content in zip(engine.prompts, ["Compute 1+2.", "Compute 3+4."], strict=True):
        expected = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
        assert sent == expected and sent.count(bos) == 1 and sent[0] == bos
    # What vLLM makes of the rendered text itself (its default add_special_tokens=True): two.
    engine.generate([gen._render("Compute 1+2.")[0]], fake_vllm.SamplingParams())
    assert engine.prompts[-1][:2] == [bos, bos]


def test_plain_prompts_get_the_special_tokens_the_hf_backend_gives_them(
    vllm_ready: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    fake_vllm.install(monkeypatch)
    gen = VLLMGenerator(str(vllm_ready), GenerationSpec(backend="vllm"))
    gen.generate(["1+2="], sampling=SamplingParams(max_new_tokens=2))
    tok = AutoTokenizer.from_pretrained(vllm_ready)
    [sent] = fake_vllm.LLM.built[0].prompts
    assert sent == tok("1+2=", add_special_tokens=True)["input_ids"] and sent[0] == tok.convert_tokens_to_ids(BOS)


def test_speculative_decoding_keeps_the_engines_stats_and_records_acceptance(
    vllm_ready: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_vllm.install(monkeypatch)
    spec = GenerationSpec(backend="vllm", speculative=SpeculativeSpec(num_tokens=2))
    gen = VLLMGenerator(str(vllm_ready), spec)
    [engine] = fake_vllm.LLM.built
    assert engine.kwargs["speculative_config"] == {"method": "mtp", "num_speculative_tokens": 2}
    assert engine.kwargs["disable_log_stats"] is False
    gen.generate(["a", "b", "c"], n=2, sampling=SamplingParams(max_new_tokens=4))
    drafted = 3 * 2 * fake_vllm.LLM.DRAFTED  # over both engines' counters
    assert (gen.draft_stats.drafted, gen.draft_stats.accepted) == (drafted, 3 * 2 * fake_vllm.LLM.ACCEPTED)
    # Without the flag (what the backend passed before), vLLM's get_metrics asserts and nothing is recorded.
    quiet = VLLMGenerator(str(vllm_ready), spec.model_copy(update={"options": {"disable_log_stats": True}}))
    quiet.generate(["a"], sampling=SamplingParams(max_new_tokens=4))
    assert quiet.draft_stats.drafted == 0
    with pytest.raises(AssertionError, match="Stat logging disabled"):
        quiet.llm.get_metrics()


def test_the_counters_of_every_engine_are_summed() -> None:
    samples = [("vllm:spec_decode_num_draft_tokens", 10), ("vllm:spec_decode_num_draft_tokens", 6),
               ("vllm:spec_decode_num_accepted_tokens", 7), ("vllm:spec_decode_num_accepted_tokens", 2),
               ("vllm:num_requests_running", 3)]
    assert spec_decode_counts(samples) == (16, 9)
    assert spec_decode_counts(samples[:2]) is None


def test_a_model_whose_mla_sizes_vllm_cannot_build_is_refused_before_the_engine(
    tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_vllm.install(monkeypatch)
    with pytest.raises(GenerationError, match=r"\(16, 16, 32\) is not among .*kv_lora_rank \+ qk_rope_head_dim"):
        VLLMGenerator(str(tiny_base), GenerationSpec(backend="vllm"))
    assert fake_vllm.LLM.built == []
