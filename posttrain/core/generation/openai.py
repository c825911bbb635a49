"""The `openai` backend: any OpenAI-compatible `/v1/chat/completions` endpoint, with retries and a thread pool."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from posttrain.core.generation.base import (
    BaseGenerator,
    GenerationError,
    GenerationSpec,
    Prompt,
    SamplingParams,
    as_messages,
    derive_seed,
    prompt_key,
    short_prompt,
    truncate_at_stop,
)

log = logging.getLogger("posttrain.generation")


class _Retryable(Exception):
    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


class OpenAIGenerator(BaseGenerator):
    """An OpenAI-compatible `/chat/completions` endpoint: one request per sample, `concurrency` in flight.

    Answers are streamed (`options.stream`, default true): a reasoning model's 8k-token answer takes minutes,
    and `timeout_s` then bounds the silence between two chunks, not the whole answer. Without streaming a
    request may take `timeout_s` plus one second per `MIN_TOKENS_PER_S` tokens of `max_new_tokens`. A server
    that ignores `stream` and answers with one JSON body is read as such.
    Retries 429, 5xx, connection errors and timeouts with exponential backoff (`options.backoff_s`,
    default 1 s, doubling; a `Retry-After` header is honoured up to 60 s); other 4xx fail at once.
    The completion keeps R1's format (`<think>...</think>` then the answer): a separate `reasoning_content`
    / `reasoning` field (DeepSeek's API, vLLM's reasoning parser) is put back in front of the answer, and
    think text returned inline without its opening tag (R1's chat template opens `<think>` in the prompt)
    gets it back. An answer cut off while still thinking keeps its think block open.
    """

    def __init__(self, model: str, spec: GenerationSpec):
        if not spec.base_url:
            raise GenerationError("openai backend: set base_url, e.g. http://127.0.0.1:8000/v1 or "
                                  "https://api.deepseek.com/v1")
        self.spec = spec
        self.name = model
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self.api_key = os.environ.get(spec.api_key_env)
        opts = dict(spec.options)
        self.backoff_s = float(opts.pop("backoff_s", 1.0))
        self.merge_reasoning = bool(opts.pop("merge_reasoning", True))
        self.stream = bool(opts.pop("stream", True))
        #: Other options go into every request body (e.g. `extra_body`-style fields a server accepts).
        self.extra_body = opts

    def generate(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> list[list[str]]:
        outs, errors = self.generate_with_errors(prompts, n, sampling)
        for err in errors:
            if err is not None:
                raise GenerationError(err)
        return outs

    def generate_with_errors(
        self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams | None = None
    ) -> tuple[list[list[str]], list[str | None]]:
        return self._sample_all(prompts, n, sampling or SamplingParams(), None)

    def generate_turns(
        self, chats: Sequence[list[dict[str, Any]]], n: int, sampling: SamplingParams, tools: list[dict[str, Any]]
    ) -> tuple[list[list[dict[str, Any]]], list[str | None]]:
        """The server reads the tool calls (OpenAI's `tools` and `tool_calls`; vLLM needs `--enable-auto-tool-choice`
        and the model's `--tool-call-parser`): each turn comes back as a message."""
        return self._sample_all(chats, n, sampling, tools)

    def _sample_all(self, prompts: Sequence[Prompt], n: int, sampling: SamplingParams,
                    tools: list[dict[str, Any]] | None) -> tuple[list[list[Any]], list[str | None]]:
        """n samples per prompt, `concurrency` requests in flight; a prompt with a failed sample fails whole."""
        jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
        results: dict[tuple[int, int], Any] = {}
        failures: dict[int, str] = {}
        with ThreadPoolExecutor(max_workers=min(self.spec.concurrency, max(1, len(jobs)))) as pool:
            futures = {job: pool.submit(self._sample, prompts[job[0]], job[1], sampling, tools) for job in jobs}
            for (i, j), fut in futures.items():
                try:
                    results[(i, j)] = fut.result()
                except GenerationError as exc:
                    failures.setdefault(i, f"prompt {i} ({short_prompt(prompts[i])!r}): {exc}")
        outs = [[] if i in failures else [results[(i, j)] for j in range(n)] for i in range(len(prompts))]
        return outs, [failures.get(i) for i in range(len(prompts))]

    def _sample(self, prompt: Prompt, index: int, sampling: SamplingParams,
                tools: list[dict[str, Any]] | None = None) -> Any:
        """One completion: its text, or (given `tools`) the turn as a message with its tool calls."""
        body: dict[str, Any] = {
            "model": self.name,
            "messages": wire_messages(as_messages(prompt)),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "n": 1,
            **({"stream": True} if self.stream else {}),
            **self.extra_body,
        }
        if sampling.seed is not None:
            body["seed"] = derive_seed(sampling.seed, prompt_key(prompt), index)
        if sampling.stop:
            body["stop"] = sampling.stop
        if tools:
            body["tools"] = tools
        attempts = self.spec.max_retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                reply = self._post(body)
                text = truncate_at_stop(reply.text(self.merge_reasoning), sampling.stop)
                return text if tools is None else reply.message(text)
            except _Retryable as exc:
                last = str(exc)
                if attempt + 1 < attempts:
                    wait = exc.wait_s if exc.wait_s is not None else self.backoff_s * 2**attempt
                    log.debug("openai: %s; retry %d/%d in %.2fs", last, attempt + 1, self.spec.max_retries, wait)
                    time.sleep(wait)
        raise GenerationError(f"{self.url}: failed after {attempts} attempt(s): {last}")

    def _post(self, body: dict[str, Any]) -> Reply:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        # Streaming: a socket timeout bounds each wait for the next chunk. Otherwise the whole answer must come
        # back within one wait: give long answers the time they take.
        timeout = self.spec.timeout_s
        if not body.get("stream"):
            timeout += body["max_tokens"] / MIN_TOKENS_PER_S
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if "text/event-stream" in (response.headers.get("Content-Type") or ""):
                    reply = _read_stream(response, self.url)
                else:
                    reply = _read_body(response.read(), self.url)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")[:300]
            if exc.code == 429 or exc.code >= 500:
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                wait = min(float(retry_after), 60.0) if retry_after and _is_number(retry_after) else None
                raise _Retryable(f"HTTP {exc.code}: {text}", wait) from None
            raise GenerationError(f"{self.url}: HTTP {exc.code} (not retried): {text}") from None
        except TimeoutError as exc:
            raise _Retryable(f"timed out after {timeout:g}s without data ({exc})") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable(f"timed out after {timeout:g}s without data") from None
            raise _Retryable(f"cannot reach the server: {exc.reason}") from None
        except (ConnectionError, OSError) as exc:
            raise _Retryable(f"connection failed: {exc}") from None
        return reply


#: Slowest decoding speed a non-streamed request is given time for (tokens per second of `max_new_tokens`).
MIN_TOKENS_PER_S = 10.0


@dataclass
class Reply:
    """What the server answered: the text, the reasoning it returned apart, why it stopped, the tool calls."""

    content: str
    reasoning: str
    finish: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def text(self, merge_reasoning: bool = True) -> str:
        return with_think(self.content, self.reasoning if merge_reasoning else None, self.finish)

    def message(self, text: str) -> dict[str, Any]:
        """The turn as an assistant message; a call whose arguments are not JSON keeps them as the string sent."""
        out: dict[str, Any] = {"role": "assistant", "content": text}
        calls = []
        for call in self.tool_calls:
            function = call.get("function") or {}
            arguments: Any = function.get("arguments") or "{}"
            if isinstance(arguments, str):
                with contextlib.suppress(ValueError):
                    arguments = json.loads(arguments)
            calls.append({"type": "function", "function": {"name": function.get("name") or "", "arguments": arguments}})
        if calls:
            out["tool_calls"] = calls
        return out


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conversation as OpenAI's API takes it: each tool call with an `id` and its arguments as a JSON string, each
    tool output with the `tool_call_id` of the call it answers (in order)."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for turn, message in enumerate(messages):
        message = {k: v for k, v in message.items() if v is not None}
        if message.get("role") == "assistant" and message.get("tool_calls"):
            calls = []
            for k, call in enumerate(message["tool_calls"]):
                function = dict(call.get("function") or {})
                if not isinstance(function.get("arguments"), str):
                    function["arguments"] = json.dumps(function.get("arguments") or {})
                calls.append({"id": call.get("id") or f"call_{turn}_{k}", "type": "function", "function": function})
            pending = [c["id"] for c in calls]
            message["tool_calls"] = calls
        elif message.get("role") == "tool" and "tool_call_id" not in message:
            message["tool_call_id"] = pending.pop(0) if pending else f"call_{turn}"
        out.append(message)
    return out


def _read_body(payload: bytes, url: str) -> Reply:
    """A whole chat completion."""
    try:
        choice = json.loads(payload)["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise GenerationError(f"{url}: unexpected response {payload[:300]!r}") from None
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    return Reply(message.get("content") or "", reasoning, choice.get("finish_reason"),
                 list(message.get("tool_calls") or []))


def _read_stream(response: Any, url: str) -> Reply:
    """Server-sent events, the deltas joined (a tool call's name and arguments arrive in pieces, by index)."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for raw in response:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            break
        try:
            event = json.loads(data)
        except ValueError:
            raise GenerationError(f"{url}: unexpected stream event {data[:300]!r}") from None
        if "error" in event:  # a server failing mid-answer: try again
            raise _Retryable(f"the server failed mid-answer: {str(event['error'])[:300]}")
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or delta.get("reasoning") or "")
            for piece in delta.get("tool_calls") or []:
                empty = {"function": {"name": "", "arguments": ""}}
                call = calls.setdefault(int(piece.get("index", len(calls))), empty)
                function = piece.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return Reply("".join(content), "".join(reasoning), finish, [calls[k] for k in sorted(calls)])


def with_think(content: str, reasoning: str | None, finish_reason: str | None = None) -> str:
    """The completion in R1's format: `reasoning` (a separate field) put back in front as `<think>...</think>`,
    or a think block returned inline without its opening tag given one. A reasoning-only answer cut off at the
    token limit stays open (`<think>...` with no closing tag), as the model wrote it."""
    if reasoning and "<think>" not in content:
        if not content.strip() and finish_reason == "length":
            return f"<think>{reasoning}"
        return f"<think>{reasoning}</think>\n{content.lstrip()}"
    close = content.find("</think>")
    if close >= 0 and "<think>" not in content[:close]:
        return "<think>" + content
    return content


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
