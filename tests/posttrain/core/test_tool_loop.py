"""The tool loop over every backend: a real model's calls (hf), a scripted teacher's, an OpenAI-compatible server's
(a real HTTP server on 127.0.0.1), each run in the real sandbox; failures and hostile programs become outputs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest

from data_pipelines.tasks.multiplication import teacher as multiplication_teacher
from posttrain.core.generation import GenerationSpec, HFGenerator, SamplingParams, ToolLoop, make_generator
from posttrain.core.tool_calls import enable_tool_calls
from posttrain.core.tools import is_error_output, tool_use
from rewards.sandbox.tool import SandboxTool
from tests.local_server import send_json, serving
from tests.tool_model import MAX_OUTPUT_CHARS, TIMEOUT_S

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=60)


@pytest.fixture(scope="module")
def python_tool() -> SandboxTool:
    return SandboxTool("python", timeout_s=TIMEOUT_S, max_output_chars=MAX_OUTPUT_CHARS)


@pytest.fixture(scope="module")
def hf_loop(tool_model: Path, python_tool: SandboxTool) -> Iterator[ToolLoop]:
    generator = HFGenerator.from_pretrained(str(tool_model))
    enable_tool_calls(generator.tokenizer)
    loop = ToolLoop(generator, [python_tool], max_turns=3)
    yield loop
    loop.close()


def test_a_real_model_calls_the_tool_reads_its_real_output_and_answers(hf_loop: ToolLoop) -> None:
    [[conv]] = hf_loop.generate(["Compute 12*34."], 1, GREEDY)
    assert [m["role"] for m in conv] == ["assistant", "tool", "assistant"]
    assert conv[0]["tool_calls"][0]["function"] == {"name": "python", "arguments": {"code": "print(12*34)"}}
    assert conv[1] == {"role": "tool", "name": "python", "content": "408\n"}  # the sandbox ran it
    assert conv[2]["content"] == "The answer is \\boxed{408}."
    # The model's tokens are counted over its two turns, the tool's output not among them.
    tokenizer = hf_loop.tokenizer
    own = sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) for m in conv if m["role"] != "tool")
    assert own < hf_loop.last_lengths[0][0] < own + 30  # + the call's markup and the ends of turns


def test_a_failing_and_a_hostile_program_are_outputs_and_the_loop_goes_on(hf_loop: ToolLoop) -> None:
    crash, spin = hf_loop.generate(["Divide by zero.", "Spin forever."], 1, GREEDY)
    for [conv], status in ((crash, "runtime error, exit code 1"), (spin, f"timeout after {TIMEOUT_S:g} s")):
        output = conv[1]["content"]
        assert is_error_output(output) and output.endswith(f"[tool error: {status}]")
        assert conv[2]["role"] == "assistant"  # the model went on after reading it
        assert tool_use(conv).errors == 1
    assert "ZeroDivisionError" in crash[0][1]["content"]


def test_sampled_completions_each_run_their_own_calls(hf_loop: ToolLoop, python_tool: SandboxTool) -> None:
    before = python_tool.counters()[0]
    outs = hf_loop.generate(["Compute 56*78."], 4, SamplingParams(temperature=1.0, max_new_tokens=60, seed=3))
    convs = outs[0]
    assert len(convs) == 4
    calls = sum(tool_use(c).calls for c in convs)
    assert python_tool.counters()[0] - before == calls >= 1


def test_the_last_turn_s_call_is_not_run(python_tool: SandboxTool) -> None:
    spec = GenerationSpec(backend="scripted", model="data_pipelines.tasks.multiplication:teacher",
                          options={"tool_rate": 1.0})
    loop = ToolLoop(make_generator(spec), [python_tool], max_turns=1)
    [[conv]] = loop.generate(["Compute 3142*2718."], 1, GREEDY)
    assert len(conv) == 1 and conv[0]["tool_calls"]
    loop.max_turns = 2
    [[conv]] = loop.generate(["Compute 3142*2718."], 1, GREEDY)
    assert conv[1]["content"] == "8539956\n" and conv[2]["content"] == "The answer is \\boxed{8539956}."
    loop.close()


def odd_teacher(prompts: list[Any], n: int, sampling: Any = None, tools: Any = None) -> list[list[Any]]:
    """Calls what it is told to by the prompt: an unknown tool, arguments that are not an object, two calls at once."""
    out = []
    for chat in prompts:
        last, ask = chat[-1], chat[0]["content"]
        if last["role"] == "tool":
            out.append([f"seen: {last['content']}"] * n)
            continue
        calls = {"unknown": [{"function": {"name": "calculator", "arguments": {"code": "1"}}}],
                 "not an object": [{"function": {"name": "python", "arguments": "[1, 2]"}}],
                 "wrong key": [{"function": {"name": "python", "arguments": {"script": "print(1)"}}}],
                 "two": [{"function": {"name": "python", "arguments": {"code": "print('first')"}}},
                         {"function": {"name": "python", "arguments": {"code": "print('second')"}}}]}[ask]
        out.append([{"role": "assistant", "content": "", "tool_calls": calls}] * n)
    return out


def test_calls_that_cannot_run_are_answered_with_an_error_the_model_reads(python_tool: SandboxTool) -> None:
    spec = GenerationSpec(backend="scripted", model="tests.posttrain.core.test_tool_loop:odd_teacher")
    loop = ToolLoop(make_generator(spec), [python_tool], max_turns=3)
    outs = loop.generate(["unknown", "not an object", "wrong key", "two"], 1, GREEDY)
    unknown, not_object, wrong_key, two = (o[0] for o in outs)
    assert unknown[1]["content"] == "[tool error: no tool named 'calculator'; the tools are ['python']]"
    assert not_object[1]["content"] == "[tool error: the arguments are not a JSON object]"
    assert "expected one string argument `code`" in wrong_key[1]["content"]
    # Two calls in one turn: both run, their outputs in the order of the calls, then the model goes on.
    assert [m["role"] for m in two] == ["assistant", "tool", "tool", "assistant"]
    assert (two[1]["content"], two[2]["content"]) == ("first\n", "second\n")
    assert all(c[-1]["content"].startswith("seen: ") for c in (unknown, not_object, wrong_key, two))
    loop.close()


def test_the_multiplication_teacher_uses_the_tool_on_its_share_of_answers(python_tool: SandboxTool) -> None:
    spec = GenerationSpec(backend="scripted", model="data_pipelines.tasks.multiplication:teacher",
                          options={"tool_rate": 0.5})
    loop = ToolLoop(make_generator(spec), [python_tool], max_turns=2)
    convs = loop.generate(["Compute 3142*2718."], 40, SamplingParams(temperature=1.0, seed=0))[0]
    used = [tool_use(c).calls for c in convs]
    assert 8 < sum(used) < 32 and set(used) == {0, 1}
    assert all(c[-1]["content"].endswith("The answer is \\boxed{8539956}.") for c in convs)
    # Without a tool offered it always answers in its head.
    assert all("tool_calls" not in t and "in my head" in t
               for t in multiplication_teacher(["Compute 3142*2718."], 10, None, tool_rate=1.0)[0])
    loop.close()


# --------------------------------------------------------------------------------------------------
# openai: a real HTTP server on 127.0.0.1 that calls the tool the OpenAI way


class _Server:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()


def _handler(state: _Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.bodies.append(body)
            last = body["messages"][-1]
            if last["role"] == "tool":
                answer = f"The answer is \\boxed{{{last['content'].strip()}}}."
                message: dict[str, Any] = {"role": "assistant", "content": answer}
                return send_json(self, 200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
            call = {"id": "call_abc", "type": "function",
                    "function": {"name": "python", "arguments": json.dumps({"code": "print(6*7)"})}}
            if body.get("stream"):
                return self._stream(call)
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            return send_json(self, 200, {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})

        def _stream(self, call: dict[str, Any]) -> None:
            """The call in pieces, as OpenAI streams it: the name first, the arguments in two chunks."""
            arguments = call["function"]["arguments"]
            deltas = [{"role": "assistant", "tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                            "function": {"name": "python", "arguments": ""}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:9]}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": arguments[9:]}}]}]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i, delta in enumerate(deltas):
                choice = {"index": 0, "delta": delta, "finish_reason": "tool_calls" if i == len(deltas) - 1 else None}
                self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    return Handler


@pytest.fixture()
def server() -> Iterator[tuple[str, _Server]]:
    state = _Server()
    with serving(_handler(state)) as url:
        yield url, state


@pytest.mark.parametrize("stream", [True, False])
def test_an_openai_compatible_server_calls_the_tool_the_openai_way(server: tuple[str, _Server],
                                                                   python_tool: SandboxTool, stream: bool) -> None:
    url, state = server
    spec = GenerationSpec(backend="openai", model="teacher-x", base_url=url, options={"stream": stream})
    loop = ToolLoop(make_generator(spec), [python_tool], max_turns=2)
    [[conv]] = loop.generate(["What is 6*7?"], 1, GREEDY)
    assert conv[0]["tool_calls"] == [{"type": "function", "function": {"name": "python",
                                                                       "arguments": {"code": "print(6*7)"}}}]
    assert conv[1]["content"] == "42\n" and conv[2]["content"] == "The answer is \\boxed{42}."
    first, second = state.bodies
    assert first["tools"] == [python_tool.schema()] == second["tools"]
    # The conversation goes back as OpenAI's API wants it: the call with an id and its arguments as a JSON string,
    # the output with the id of the call it answers.
    call, output = second["messages"][1], second["messages"][2]
    assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == {"code": "print(6*7)"}
    assert output == {"role": "tool", "name": "python", "content": "42\n",
                      "tool_call_id": call["tool_calls"][0]["id"]}
    loop.close()


# --------------------------------------------------------------------------------------------------
# vllm: a stand-in engine where vLLM would be (it cannot be installed here), with the real tokenizer and parser


class _StandInLLM:
    """vLLM's `LLM` as the backend uses it: it renders nothing itself, it completes the token ids it is given
    (`{"prompt_token_ids": ...}`, tokenized by the backend)."""

    tokenizer: Any = None
    seen: ClassVar[list[str]] = []

    def __init__(self, model: str, dtype: str = "auto", **engine: Any) -> None:
        pass

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, inputs: list[dict[str, list[int]]], params: list[Any]) -> list[Any]:
        from types import SimpleNamespace

        from posttrain.core.tool_calls import OUTPUT_BEGIN, OUTPUTS_END

        out = []
        for one in inputs:
            text = self.tokenizer.decode(one["prompt_token_ids"])
            self.seen.append(text)
            if text.endswith(OUTPUTS_END):  # after the tool's output: answer with it
                product = text.rsplit(OUTPUT_BEGIN, 1)[1].split("\n")[0]
                reply = f"The answer is \\boxed{{{product}}}."
            else:  # DeepSeek-V3's call, as the model writes it (special tokens skipped: these are not special)
                reply = ('<think>run it</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function'
                         '<｜tool▁sep｜>python\n```json\n{"code": "print(6*7)"}\n```'
                         '<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
            out.append(SimpleNamespace(outputs=[SimpleNamespace(text=reply)]))
        return out


def test_the_vllm_backend_renders_the_tools_and_reads_the_calls(monkeypatch: pytest.MonkeyPatch,
                                                                 python_tool: SandboxTool) -> None:
    import types

    from data_pipelines.tasks.multiplication import corpus
    from posttrain.core.tiny import train_tokenizer

    _StandInLLM.tokenizer = train_tokenizer(corpus(200), 512, tool_calls=True)
    _StandInLLM.seen.clear()
    monkeypatch.setitem(__import__("sys").modules, "vllm",
                        types.SimpleNamespace(LLM=_StandInLLM, SamplingParams=lambda **kw: kw))
    loop = ToolLoop(make_generator(GenerationSpec(backend="vllm", model="stand-in")), [python_tool], max_turns=2)
    [[conv]] = loop.generate(["What is 6*7?"], 1, GREEDY)
    assert conv[0]["tool_calls"][0]["function"]["arguments"] == {"code": "print(6*7)"}
    assert conv[1]["content"] == "42\n" and conv[2]["content"] == "The answer is \\boxed{42}."
    first, second = _StandInLLM.seen
    assert first.endswith("<｜User｜>What is 6*7?<｜Assistant｜>")
    assert second.endswith("<｜tool▁output▁begin｜>42\n<｜tool▁output▁end｜><｜tool▁outputs▁end｜>")
    loop.close()
