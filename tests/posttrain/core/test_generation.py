from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from posttrain.core.errors import MissingDependencyError, PluginError
from posttrain.core.generation import (
    GenerationError,
    GenerationSpec,
    HFGenerator,
    SamplingParams,
    make_generator,
    sample_rng,
    truncate_at_stop,
)
from posttrain.core.generation.openai import with_think
from tests.local_server import send_json, serving

# --------------------------------------------------------------------------------------------------
# scripted


def echo_teacher(prompts: list[Any], n: int, sampling: SamplingParams, suffix: str = "!") -> list[list[str]]:
    """A teacher for the tests: sample i of a prompt is `<think>i</think>PROMPT` + suffix + a seeded digit."""
    out = []
    for p in prompts:
        text = p if isinstance(p, str) else p[-1]["content"]
        if "explode" in text:
            raise ValueError(f"cannot answer {text!r}")
        out.append([f"<think>{i}</think>{text}{suffix}{sample_rng(sampling.seed, p, i).randint(0, 9)}"
                    for i in range(n)])
    return out


def short_teacher(prompts: list[Any], n: int, sampling: SamplingParams) -> list[list[str]]:
    return [["only one"] for _ in prompts]


def test_scripted_backend_calls_the_function_with_options() -> None:
    gen = make_generator(GenerationSpec(backend="scripted", model=f"{__name__}:echo_teacher", options={"suffix": "?"}))
    out = gen.generate(["a", [{"role": "user", "content": "b"}]], n=3, sampling=SamplingParams(seed=1))
    assert [len(row) for row in out] == [3, 3]
    assert out[0][2].startswith("<think>2</think>a?")
    assert out[1][0].startswith("<think>0</think>b?")
    # Seeds are per (seed, prompt, sample): a prompt gets the same samples whatever it is batched with.
    assert gen.generate(["b", "a"], n=3, sampling=SamplingParams(seed=1))[1] == out[0]


def test_scripted_backend_applies_stop_strings() -> None:
    gen = make_generator(GenerationSpec(backend="scripted", model=f"{__name__}:echo_teacher"))
    (row,) = gen.generate(["abc"], n=1, sampling=SamplingParams(stop=["</think>"]))
    assert row == ["<think>0"]


def test_scripted_backend_errors_are_per_prompt() -> None:
    gen = make_generator(GenerationSpec(backend="scripted", model=f"{__name__}:echo_teacher"))
    with pytest.raises(ValueError, match="explode"):
        gen.generate(["ok", "explode"], n=2)
    outs, errors = gen.generate_with_errors(["ok", "explode", "fine"], n=2)
    assert [len(o) for o in outs] == [2, 0, 2]
    assert errors[0] is None and errors[2] is None
    assert errors[1] is not None and "explode" in errors[1]


def test_scripted_backend_checks_the_shape_of_what_it_gets() -> None:
    gen = make_generator(GenerationSpec(backend="scripted", model=f"{__name__}:short_teacher"))
    with pytest.raises(GenerationError, match="expected 2 strings"):
        gen.generate(["x"], n=2)


def test_scripted_backend_unknown_function_is_a_plugin_error() -> None:
    with pytest.raises(PluginError, match="no attribute"):
        make_generator(GenerationSpec(backend="scripted", model=f"{__name__}:nope"))


def test_truncate_at_stop_cuts_at_the_earliest_stop() -> None:
    assert truncate_at_stop("a.b;c", [";", "."]) == "a"
    assert truncate_at_stop("abc", ["x"]) == "abc"
    assert truncate_at_stop("abc", None) == "abc"


def test_spec_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="extra"):
        GenerationSpec(backend="hf", modle="x")  # type: ignore[call-arg]


def test_vllm_backend_without_vllm_says_how_to_install() -> None:
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match=r"pip install posttrain\[vllm\]"):
        make_generator(GenerationSpec(backend="vllm", model="some/model"))


# --------------------------------------------------------------------------------------------------
# hf


@pytest.fixture(scope="module")
def hf(tiny_base: Path) -> HFGenerator:
    return make_generator(GenerationSpec(backend="hf", model=str(tiny_base), batch_size=8))  # type: ignore[return-value]


def test_hf_returns_n_completions_without_the_prompt(hf: HFGenerator) -> None:
    prompts = ["Compute 1+2.", "Compute 365+75.", "Compute 9+9."]
    out = hf.generate(prompts, n=3, sampling=SamplingParams(temperature=1.0, max_new_tokens=6, seed=0))
    assert [len(row) for row in out] == [3, 3, 3]
    for prompt, row in zip(prompts, out, strict=True):
        for text in row:
            assert isinstance(text, str) and not text.startswith(prompt)


def test_hf_seeded_sampling_is_reproducible(hf: HFGenerator) -> None:
    prompts = ["Compute 12+34.", "Compute 5+6."]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=3)
    first = hf.generate(prompts, n=2, sampling=sampling)
    assert hf.generate(prompts, n=2, sampling=sampling) == first
    other = hf.generate(prompts, n=2, sampling=SamplingParams(temperature=1.0, max_new_tokens=8, seed=4))
    assert other != first  # a random 512-token model: two seeds agreeing on 32 tokens is ~impossible


def test_hf_greedy_is_deterministic_and_batches_agree(hf: HFGenerator) -> None:
    prompts = ["Compute 12+34.", "Compute 5+6.", "Compute 100+250."]
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    out = hf.generate(prompts, n=2, sampling=greedy)
    assert all(row[0] == row[1] for row in out)
    one_by_one = [hf.generate([p], n=1, sampling=greedy)[0][0] for p in prompts]
    assert one_by_one == [row[0] for row in out]


@pytest.fixture(scope="module")
def forced(tiny_base: Path) -> Any:
    """The tiny model rewired so that greedy decoding always picks one chosen token.

    Every input embedding is the same vector, so the last hidden state is the same at every position;
    pointing that token's output row along it makes its logit dominate.
    """
    import torch

    from posttrain.core.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(str(tiny_base))
    tok = load_tokenizer(str(tiny_base))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:] = emb[0].clone()
        hidden = model.model(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state[0, -1]

    def force(token: str) -> HFGenerator:
        with torch.no_grad():
            head = model.get_output_embeddings().weight
            head.normal_(0, 0.02)
            head[tok.convert_tokens_to_ids(token)] = 100 * hidden / hidden.norm()
        return HFGenerator(model, tok, GenerationSpec(backend="hf"))

    return force, tok


def test_hf_keeps_think_tokens_and_skips_special_ones(forced: Any) -> None:
    force, _ = forced
    gen = force("<think>")
    (row,) = gen.generate(["Compute 1+2."], n=1, sampling=SamplingParams(temperature=0, max_new_tokens=3))
    assert row == ["<think><think><think>"]


def test_hf_stops_at_eos(forced: Any) -> None:
    force, tok = forced
    gen = force(tok.eos_token)
    (row,) = gen.generate(["Compute 1+2."], n=2, sampling=SamplingParams(temperature=0, max_new_tokens=5))
    assert row == ["", ""]


def test_hf_reports_the_tokens_each_completion_took(forced: Any, hf: HFGenerator) -> None:
    force, tok = forced
    gen = force("<think>")
    gen.generate(["Compute 1+2.", "Compute 3+4."], n=2, sampling=SamplingParams(temperature=0, max_new_tokens=3))
    assert gen.last_lengths == [[3, 3], [3, 3]]
    gen = force(tok.eos_token)  # the end-of-sequence token counts, the padding after it does not
    gen.generate(["Compute 1+2."], n=1, sampling=SamplingParams(temperature=0, max_new_tokens=5))
    assert gen.last_lengths == [[1]]
    out = hf.generate(["Compute 12+34.", "Compute 5+6."], n=3,
                      sampling=SamplingParams(temperature=1.0, max_new_tokens=7, seed=0))
    assert [len(row) for row in hf.last_lengths] == [3, 3] and all(1 <= n <= 7 for r in hf.last_lengths for n in r)
    assert len(out) == 2


def test_hf_clips_new_tokens_to_the_models_context(forced: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A budget past the context (a benchmark's 2,048 tokens on a 512-token model) runs, clipped, with a warning."""
    force, tok = forced
    gen = force("<think>")
    prompt_tokens = len(tok("Compute 1+2.")["input_ids"])
    gen.context = prompt_tokens + 4
    with caplog.at_level("WARNING", logger="posttrain.generation"):
        (row,) = gen.generate(["Compute 1+2."], n=1, sampling=SamplingParams(temperature=0, max_new_tokens=2048))
    assert row == ["<think>" * 4] and gen.last_lengths == [[4]]
    assert "max_new_tokens 2048 does not fit the context" in caplog.text and "clipped to 4" in caplog.text
    gen.context = prompt_tokens
    with pytest.raises(GenerationError, match="fills the whole context"):
        gen.generate(["Compute 1+2."], n=1, sampling=SamplingParams(temperature=0, max_new_tokens=8))


def test_hf_stop_strings_end_the_completion(forced: Any) -> None:
    force, _ = forced
    gen = force("</think>")
    (row,) = gen.generate(["Compute 1+2."], n=1, sampling=SamplingParams(temperature=0, max_new_tokens=5,
                                                                          stop=["</think>"]))
    assert row == [""]


def test_hf_chat_prompts_use_the_chat_template(hf: HFGenerator) -> None:
    text, add_special = hf._render([{"role": "user", "content": "Compute 1+2."}])
    assert text.endswith("<｜User｜>Compute 1+2.<｜Assistant｜>") and add_special is False
    assert hf._render("Compute 1+2.") == ("Compute 1+2.", True)
    out = hf.generate(["Compute 1+2.", [{"role": "user", "content": "Compute 3+4."}]], n=1,
                      sampling=SamplingParams(temperature=0, max_new_tokens=3))
    assert len(out) == 2


def test_hf_restores_training_mode(tiny_base: Path) -> None:
    from posttrain.core.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(str(tiny_base))
    model.train()
    gen = HFGenerator(model, load_tokenizer(str(tiny_base)))
    gen.generate(["Compute 1+2."], n=1, sampling=SamplingParams(temperature=0, max_new_tokens=2))
    assert model.training


# --------------------------------------------------------------------------------------------------
# openai: a real HTTP server on 127.0.0.1


class _Server:
    """An OpenAI-compatible chat endpoint whose behaviour depends on the prompt's text."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()


def _handler(state: _Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            with state.lock:
                state.hits[prompt] += 1
                hit = state.hits[prompt]
                state.bodies.append(body)
                state.headers.append(dict(self.headers))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": "not found"})
            if prompt.startswith("slow") and hit == 1:
                time.sleep(1.5)  # longer than the client's timeout: the first attempt times out
            if prompt.startswith("flaky") and hit == 1:
                return self._send(500, {"error": "internal"})
            if prompt.startswith("limited") and hit == 1:
                return self._send(429, {"error": "rate limited"}, {"Retry-After": "0"})
            if prompt.startswith("broken"):
                return self._send(503, {"error": "down"})
            if prompt.startswith("bad"):
                return self._send(400, {"error": "bad request"})
            message: dict[str, Any] = {"role": "assistant", "content": f"echo {prompt} #{body.get('seed')}"}
            if prompt.startswith("reason"):
                message = {"role": "assistant", "content": "The answer is 4.", "reasoning_content": "2+2=4"}
            if prompt.startswith("inline"):  # no reasoning parser: R1's think text, its opening tag in the prompt
                message = {"role": "assistant", "content": "\n2+2=4\n</think>\n\nThe answer is 4."}
            if prompt.startswith("stream") and body.get("stream"):
                return self._stream(prompt)
            return self._send(200, {"choices": [{"index": 0, "message": message}]})

        def _stream(self, prompt: str) -> None:
            """Server-sent events, a chunk every 0.4 s: 2 s in all, longer than the client's 1.5 s timeout."""
            deltas = [{"role": "assistant"}, {"reasoning_content": "2+2"}, {"reasoning_content": "=4"},
                      {"content": "The answer"}, {"content": " is 4."}]
            finish = "stop"
            if prompt.startswith("stream cut"):  # the token limit reached while still thinking
                deltas, finish = deltas[:3], "length"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i, delta in enumerate(deltas):
                time.sleep(0.4)
                choice = {"index": 0, "delta": delta, "finish_reason": finish if i == len(deltas) - 1 else None}
                self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

        def _send(self, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            send_json(self, code, payload, headers)

    return Handler


@pytest.fixture()
def server() -> Iterator[tuple[str, _Server]]:
    state = _Server()
    with serving(_handler(state)) as url:
        yield url, state


def _openai(url: str, **kwargs: Any) -> Any:
    kwargs = {"timeout_s": 0.5, **kwargs}
    spec = GenerationSpec(backend="openai", model="teacher-x", base_url=url, max_retries=2, concurrency=4,
                          options={"backoff_s": 0.01}, **kwargs)
    return make_generator(spec)


def test_openai_returns_n_completions_per_prompt(server: tuple[str, _Server], monkeypatch: Any) -> None:
    url, state = server
    monkeypatch.setenv("TEST_KEY", "sk-test")
    gen = _openai(url, api_key_env="TEST_KEY")
    out = gen.generate(["a", [{"role": "system", "content": "s"}, {"role": "user", "content": "b"}]], n=2,
                       sampling=SamplingParams(temperature=0.6, max_new_tokens=7, seed=5, stop=["\n\n"]))
    assert [len(r) for r in out] == [2, 2]
    assert all(c.startswith("echo a #") for c in out[0]) and all(c.startswith("echo b #") for c in out[1])
    assert out[0][0] != out[0][1]  # each sample has its own seed
    body = state.bodies[0]
    assert body["model"] == "teacher-x" and body["max_tokens"] == 7 and body["temperature"] == 0.6
    assert body["stop"] == ["\n\n"]
    assert any(b["messages"][0] == {"role": "system", "content": "s"} for b in state.bodies)
    assert state.headers[0]["Authorization"] == "Bearer sk-test"
    # The same seed gives the same per-sample seeds again.
    assert gen.generate(["a"], n=2, sampling=SamplingParams(seed=5))[0] == out[0]


def test_openai_retries_a_timeout(server: tuple[str, _Server]) -> None:
    url, state = server
    (row,) = _openai(url).generate(["slow one"], n=1)
    assert row[0].startswith("echo slow one")
    assert state.hits["slow one"] == 2


def test_openai_retries_a_500_and_a_429(server: tuple[str, _Server]) -> None:
    url, state = server
    out = _openai(url).generate(["flaky", "limited"], n=1)
    assert out[0][0].startswith("echo flaky") and out[1][0].startswith("echo limited")
    assert state.hits["flaky"] == 2 and state.hits["limited"] == 2


def test_openai_persistent_failure_is_a_per_prompt_error(server: tuple[str, _Server]) -> None:
    url, state = server
    gen = _openai(url)
    outs, errors = gen.generate_with_errors(["fine", "broken", "bad"], n=2)
    assert outs[0] and outs[1] == [] and outs[2] == []
    assert errors[0] is None
    assert errors[1] is not None and "503" in errors[1] and "3 attempt" in errors[1] and "broken" in errors[1]
    assert errors[2] is not None and "400" in errors[2] and "not retried" in errors[2]
    assert state.hits["broken"] == 2 * 3  # two samples, 1 try + 2 retries each
    assert state.hits["bad"] == 2  # a 4xx is not retried
    with pytest.raises(GenerationError, match="503"):
        gen.generate(["broken"], n=1)


def test_openai_unreachable_server_is_an_error(server: tuple[str, _Server]) -> None:
    gen = _openai("http://127.0.0.1:9/v1")
    outs, errors = gen.generate_with_errors(["x"], n=1)
    assert outs == [[]] and errors[0] is not None and "cannot reach" in errors[0]


def test_openai_puts_reasoning_content_back_in_think_tags(server: tuple[str, _Server]) -> None:
    url, _ = server
    (row,) = _openai(url).generate(["reason"], n=1)
    assert row == ["<think>2+2=4</think>\nThe answer is 4."]


def test_openai_streams_long_answers_past_the_timeout_and_rebuilds_the_think_block(
    server: tuple[str, _Server]
) -> None:
    """`timeout_s` bounds the silence between chunks, not the answer: an 8k-token answer takes minutes."""
    url, state = server
    gen = _openai(url, timeout_s=1.5)
    assert gen.generate(["stream me"], n=1)[0] == ["<think>2+2=4</think>\nThe answer is 4."]
    assert state.hits["stream me"] == 1 and state.bodies[0]["stream"] is True
    assert gen.generate(["stream cut"], n=1)[0] == ["<think>2+2=4"]  # cut off while thinking: left open


def test_openai_gives_inline_think_text_its_opening_tag(server: tuple[str, _Server]) -> None:
    url, _ = server
    assert _openai(url).generate(["inline"], n=1)[0] == ["<think>\n2+2=4\n</think>\n\nThe answer is 4."]


def test_openai_without_streaming_reads_one_body(server: tuple[str, _Server]) -> None:
    url, state = server
    gen = make_generator(GenerationSpec(backend="openai", model="m", base_url=url, options={"stream": False}))
    assert gen.generate(["reason"], n=1)[0] == ["<think>2+2=4</think>\nThe answer is 4."]
    assert "stream" not in state.bodies[0]


def test_think_blocks_are_left_alone_when_whole() -> None:
    assert with_think("<think>a</think> b", "ignored") == "<think>a</think> b"
    assert with_think("plain answer", None) == "plain answer"
    assert with_think("answer", "", "stop") == "answer"


def test_openai_needs_a_base_url() -> None:
    with pytest.raises(GenerationError, match="base_url"):
        make_generator(GenerationSpec(backend="openai", model="m"))
