from __future__ import annotations

import json
import pickle
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from posttrain.core.errors import PluginError
from rewards.genrm import GenRMReward, VerdictError, load_principles, parse_preference, parse_score, render
from rewards.registry import get_reward
from tests.local_server import send_json

# --------------------------------------------------------------------------------------------------
# Verdict parsing: what judges really write


@pytest.mark.parametrize(("text", "expected"), [
    ("The steps check out.\nVerdict: Score: 8/10", 0.8),
    ("Score: 3", 0.3),  # a bare score on the scale the judge was asked for
    ("**Score: 7/10**", 0.7),
    ("**Score:** 7 / 10", 0.7),
    ("Score: **7**/10", 0.7),
    ("## Final verdict\n\n**Rating:** [[9]]", 0.9),
    ("I would give this a score of 4 out of 5.", 0.8),
    ("The score is 6.", 0.6),
    ("Scores: 6/10 for correctness.", 0.6),
    ("Overall score - 9/10", 0.9),
    ("Score = 85%", 0.85),
    ("Score: 8.5/10", 0.85),
    ("Rating: 4/5. The response is mostly right, with a small slip in the second step.", 0.8),  # trailing text
    ("\\boxed{6}", 0.6),
    ("The reasoning holds up.\n\n**8/10**", 0.8),  # a bare scale on the last line
    # Several candidates: the last in the verdict section wins, not one quoted in the reasoning.
    ("Step 1 is right (a Score: 2/10 would be too harsh).\nFinal verdict: Score: 9/10", 0.9),
    ("Score: 3/10 at first sight.\nVerdict:\nScore: 6/10\nThe answer could cite its steps.", 0.6),
    ("Reasoning ... Score: 4/5. On reflection, Score: 5/5", 1.0),
    # A reasoning model: whatever is inside <think> is reasoning, not the verdict.
    ("<think>maybe Score: 1/10? no, the sum is right</think>\nScore: 10/10", 1.0),
    # A verdict written before a closing remark headed like a verdict section.
    ("Score: 7/10\n\nConclusion: the answer is right but terse.", 0.7),
    ("Grade: 2", 0.2),
])
def test_parse_score_reads_the_verdict_judges_write(text: str, expected: float) -> None:
    assert parse_score(text) == pytest.approx(expected)


def test_parse_score_uses_the_requested_scale_only_when_the_judge_declares_none() -> None:
    assert parse_score("Score: 3", scale=5) == pytest.approx(0.6)
    assert parse_score("Score: 3/10", scale=5) == pytest.approx(0.3)


@pytest.mark.parametrize(("text", "why"), [
    ("The answer looks right to me.", "no score"),
    ("Verdict: Score: X/10", "no score"),  # the template echoed back
    ("Score: 12/10", "outside the scale"),
    ("Score: -1", "outside the scale"),
    ("<think>The sum 9+5 is 14, so the step", "never ended"),  # cut off inside its reasoning
    ("", "no score"),
])
def test_parse_score_refuses_what_holds_no_verdict(text: str, why: str) -> None:
    with pytest.raises(VerdictError, match=why):
        parse_score(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("Both are fine, but A is clearer. [[A]]", "A"),
    ("My final verdict is: [[B]]", "B"),
    ("[[C]]", "tie"),
    ("It is a draw: [[tie]]", "tie"),
    ("**Verdict:** Response B", "B"),
    ("Better response: A", "A"),
    ("Verdict: a tie between the two.", "tie"),  # the article 'a' is not response A
    ("First I leaned to [[A]], but B checks its steps.\nFinal verdict: [[B]]", "B"),
])
def test_parse_preference(text: str, expected: str) -> None:
    assert parse_preference(text) == expected


def test_parse_preference_refuses_no_verdict() -> None:
    with pytest.raises(VerdictError, match=r"\[\[A\]\]"):
        parse_preference("Response A is longer; response B is shorter.")


# --------------------------------------------------------------------------------------------------
# A real OpenAI-compatible judge on 127.0.0.1, with canned answers picked by a `case=` tag in the task


Behaviour = Callable[[int, dict[str, Any]], tuple[int, Any]]


def _ok(text: str, reasoning: str | None = None) -> tuple[int, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return 200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def _pairwise(attempt: int, body: dict[str, Any]) -> tuple[int, Any]:
    """A judge that prefers the response holding GOOD, whichever position it is in."""
    prompt = body["messages"][-1]["content"]
    a = prompt.split("[Response A]")[1].split("[Response B]")[0]
    b = prompt.split("[Response B]")[1]
    if ("GOOD" in a) == ("GOOD" in b):
        return _ok("Both are equally good.\nVerdict: [[C]]")
    return _ok("Checking both...\nVerdict: [[A]]" if "GOOD" in a else "Checking both...\nVerdict: [[B]]")


BEHAVIOURS: dict[str, Behaviour] = {
    "ok8": lambda k, b: _ok("The sum is right and every step holds.\nVerdict: Score: 8/10"),
    "bold": lambda k, b: _ok("Mostly right.\n\n**Score:** 7/10"),
    "outof": lambda k, b: _ok("I'd rate it 4 out of 5 overall. Rating: 4 out of 5."),
    "reasoner": lambda k, b: _ok("Score: 9/10", reasoning="A first guess: Score: 1/10. No, the sum is right."),
    "malformed": lambda k, b: _ok("I think it is fine, really."),
    "empty": lambda k, b: (200, {"choices": []}),
    "http500": lambda k, b: (500, "internal error"),
    "http400": lambda k, b: (400, "bad request: unknown model"),
    "flaky": lambda k, b: (500, "overloaded") if k <= 2 else _ok("Verdict: Score: 6/10"),
    "ratelimited": lambda k, b: (429, "slow down") if k == 1 else _ok("Verdict: Score: 5/10"),
    "slow": lambda k, b: (time.sleep(1.5), _ok("Verdict: Score: 4/10"))[1],
    "slowonce": lambda k, b: (time.sleep(1.5 if k == 1 else 0), _ok("Verdict: Score: 3/10"))[1],
    "vary": lambda k, b: _ok(f"Verdict: Score: {6 if k % 2 else 8}/10"),
    "halfbad": lambda k, b: _ok("Verdict: Score: 10/10" if k % 2 else "no verdict at all"),
    "principled": lambda k, b: _ok("1. follows. 2. follows.\nVerdict: Score: 10/10")
    if "Be concise." in b["messages"][-1]["content"] else _ok("Verdict: Score: 0/10"),
    "pair": _pairwise,
    "firstalways": lambda k, b: _ok("Verdict: [[A]]"),  # a judge with position bias
}


class JudgeServer:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                case = re.search(r"case=(\w+)", content)
                name = case.group(1) if case else "ok8"
                with server.lock:
                    server.counts[name] += 1
                    server.bodies.append(body)
                    attempt = server.counts[name]
                status, payload = BEHAVIOURS[name](attempt, body)
                send_json(self, status, payload, {"Retry-After": "0"} if status == 429 else None)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.bodies.clear()


@pytest.fixture(scope="module")
def server() -> Iterator[JudgeServer]:
    srv = JudgeServer()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def judge(server: JudgeServer) -> Callable[..., GenRMReward]:
    server.reset()

    def make(**kwargs: Any) -> GenRMReward:
        options = {"backend": "openai", "model": "judge", "base_url": server.url, "timeout_s": 5.0,
                   "max_retries": 2, "options": {"backoff_s": 0.01}, **kwargs}
        return GenRMReward(**options)

    return make


def test_scores_of_many_verdict_shapes_from_a_real_server(judge: Callable[..., GenRMReward],
                                                          server: JudgeServer) -> None:
    reward = judge()
    cases = ["ok8", "bold", "outof", "reasoner"]
    scores, errors = reward.score_with_errors([f"answer {c}" for c in cases],
                                              prompts=[f"case={c} Compute 1+1." for c in cases])
    assert scores == pytest.approx([0.8, 0.7, 0.8, 0.9])
    assert errors == [None] * 4
    # What the judge was sent: the task, the response, a request for a verdict on the 0-10 scale.
    sent = server.bodies[0]["messages"][-1]["content"]
    assert "[Task]" in sent and "[Response]" in sent and "Score: X/10" in sent
    assert server.bodies[0]["temperature"] == 0.0  # one sample: greedy


def test_malformed_verdicts_give_none_and_keep_the_raw_text(judge: Callable[..., GenRMReward]) -> None:
    wrapped = get_reward("genrm", backend="openai", model="judge", base_url=judge().spec.base_url, max_retries=0)
    scores, errors = wrapped.score_with_errors(["a", "b", "c"],
                                               prompts=["case=malformed 1", "case=ok8 2", "case=empty 3"])
    assert scores[0] is None and scores[1] == pytest.approx(0.8) and scores[2] is None
    assert "I think it is fine, really." in errors[0]  # the judge's own words are kept
    assert "unparseable verdict" in errors[0]
    assert "unexpected response" in errors[2]
    assert errors[1] is None
    assert wrapped.error_count == 2


def test_http_errors_are_retried_then_give_none_with_the_error(judge: Callable[..., GenRMReward],
                                                               server: JudgeServer) -> None:
    reward = judge(max_retries=2)
    scores, errors = reward.score_with_errors(["x"] * 4, prompts=["case=http500 a", "case=flaky b",
                                                                  "case=ratelimited c", "case=http400 d"])
    assert scores[0] is None and "HTTP 500" in errors[0] and "3 attempt(s)" in errors[0]
    assert scores[1:3] == pytest.approx([0.6, 0.5])  # recovered on a retry
    assert scores[3] is None and "not retried" in errors[3]
    assert server.counts == {"http500": 3, "flaky": 3, "ratelimited": 2, "http400": 1}
    # Failures of the transport are not cached: the next call asks again.
    reward(["x"], prompts=["case=http500 a"])
    assert server.counts["http500"] == 6


def test_slow_judges_time_out_and_are_retried(judge: Callable[..., GenRMReward], server: JudgeServer) -> None:
    reward = judge(max_retries=1, timeout_s=0.5)  # the slow cases take 1.5 s
    scores, errors = reward.score_with_errors(["x", "y"], prompts=["case=slow a", "case=slowonce b"])
    assert scores[0] is None and "timed out" in errors[0]
    assert scores[1] == pytest.approx(0.3)  # the retry came back in time
    assert server.counts["slow"] == 2 and server.counts["slowonce"] == 2


def test_n_samples_are_averaged_and_unparseable_samples_left_out(judge: Callable[..., GenRMReward],
                                                                 server: JudgeServer) -> None:
    reward = judge(n=4, temperature=0.7, seed=1)
    scores, errors = reward.score_with_errors(["x", "y", "z"], prompts=["case=vary a", "case=halfbad b",
                                                                        "case=malformed c"])
    assert scores[0] == pytest.approx(0.7)  # two 6/10 and two 8/10
    assert scores[1] == pytest.approx(1.0)  # the two that parse
    assert scores[2] is None and "4/4 samples" in errors[2]
    assert server.counts == {"vary": 4, "halfbad": 4, "malformed": 4}
    temperatures = {b["temperature"] for b in server.bodies}
    seeds = {b["seed"] for b in server.bodies if "case=vary" in b["messages"][-1]["content"]}
    assert temperatures == {0.7} and len(seeds) == 4  # distinct samples, reproducible seeds


def test_identical_pairs_are_judged_once(judge: Callable[..., GenRMReward], server: JudgeServer) -> None:
    reward = judge()
    first = reward(["same", "same", "other"], prompts=["case=ok8 q", "case=ok8 q", "case=ok8 q"])
    assert first == pytest.approx([0.8] * 3)
    assert server.counts["ok8"] == 2 and reward.judged == 2
    again = reward(["same", "other"], prompts=["case=ok8 q", "case=ok8 q"])
    assert again == pytest.approx([0.8, 0.8])
    assert server.counts["ok8"] == 2 and reward.cache_hits == 2
    uncached = judge(cache=False)
    uncached(["same"], prompts=["case=ok8 q"])
    uncached(["same"], prompts=["case=ok8 q"])
    assert server.counts["ok8"] == 4


def test_a_reference_answer_is_shown_when_the_row_has_one(judge: Callable[..., GenRMReward],
                                                          server: JudgeServer) -> None:
    judge()(["The answer is 5."], prompts=["case=ok8 Compute 2+3."], solution=["5"])
    sent = server.bodies[0]["messages"][-1]["content"]
    assert "[Reference answer]\n5" in sent
    server.reset()
    judge()(["The answer is 5."], prompts=["case=ok8 Compute 2+3."])
    assert "[Reference answer]" not in server.bodies[0]["messages"][-1]["content"]


def test_principles_mode_rates_against_a_principles_file(judge: Callable[..., GenRMReward], server: JudgeServer,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "principles.txt"
    path.write_text("# house rules\n- Be concise.\n2) Cite the steps.\n\n")
    assert load_principles(str(path)) == ["Be concise.", "Cite the steps."]
    reward = judge(principles=str(path))
    assert reward([" x"], prompts=["case=principled q"]) == pytest.approx([1.0])
    sent = server.bodies[0]["messages"][-1]["content"]
    assert "[Principles]\n1. Be concise.\n2. Cite the steps." in sent
    # The built-in set, by name.
    default = load_principles("default")
    assert len(default) >= 5 and any("language" in p for p in default)
    assert judge(principles="default")([" x"], prompts=["case=principled q"]) == pytest.approx([0.0])


def test_pairwise_mode_judges_both_orders_against_the_baseline(judge: Callable[..., GenRMReward],
                                                               server: JudgeServer) -> None:
    reward = judge(mode="pairwise")
    scores = reward(["GOOD answer", "bad answer", "GOOD too"], prompts=["case=pair q"] * 3,
                    baseline=["bad one", "GOOD one", "GOOD one"])
    assert scores == pytest.approx([1.0, 0.0, 0.5])
    assert server.counts["pair"] == 6  # every row in both orders
    # A judge that always picks the first response is cancelled out by the swap.
    biased = judge(mode="pairwise")(["x"], prompts=["case=firstalways q"], baseline=["y"])
    assert biased == pytest.approx([0.5])
    no_swap = judge(mode="pairwise", swap=False)(["x"], prompts=["case=firstalways q2"], baseline=["y"])
    assert no_swap == pytest.approx([1.0])
    with pytest.raises(ValueError, match="baseline"):
        judge(mode="pairwise")(["x"], prompts=["q"])


def test_in_a_weighted_mix_none_counts_as_absent(judge: Callable[..., GenRMReward]) -> None:
    from rewards.mix import combine

    genrm = get_reward("genrm", backend="openai", model="judge", base_url=judge().spec.base_url, max_retries=0)
    fmt = get_reward("format")
    completions = ["<think>1+1=2</think> 2", "<think>x</think> y"]
    prompts = ["case=ok8 Compute 1+1.", "case=malformed Compute 1+1."]
    scores = {"genrm": genrm(completions, prompts=prompts), "format": fmt(completions, prompts=prompts)}
    assert combine(scores, {"genrm": 0.5, "format": 1.0}) == pytest.approx([0.5 * 0.8 + 1.0, 1.0])


def test_the_rewards_cli_scores_with_genrm_and_records_errors(server: JudgeServer, tmp_path: Path,
                                                             python: str) -> None:
    server.reset()
    rows = [{"prompt": "case=ok8 Compute 1+1.", "completion": "2"},
            {"prompt": "case=malformed Compute 1+2.", "completion": "3"}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kwargs = json.dumps({"backend": "openai", "model": "judge", "base_url": server.url, "max_retries": 0})
    proc = subprocess.run([python, "-m", "posttrain.cli", "rewards", "score", "--reward", "genrm:2",
                           "--reward-kwargs", f"genrm={kwargs}", "--input", str(src), "--output", str(dst)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert out[0]["rewards"] == {"genrm": pytest.approx(0.8)} and out[0]["reward"] == pytest.approx(1.6)
    assert out[1]["rewards"] == {"genrm": None} and "I think it is fine" in out[1]["errors"]["genrm"]


# --------------------------------------------------------------------------------------------------
# Options, templates, pickling


def test_bad_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="base_url"):
        GenRMReward(backend="openai", model="judge")
    with pytest.raises(PluginError, match="needs `model`"):
        GenRMReward(backend="hf")
    with pytest.raises(PluginError, match="neither a built-in"):
        GenRMReward(backend="openai", model="j", base_url="http://127.0.0.1:9/v1", template="nope")
    with pytest.raises(PluginError, match="n must be at least 1"):
        GenRMReward(backend="openai", model="j", base_url="http://127.0.0.1:9/v1", n=0)
    broken = tmp_path / "broken.txt"
    broken.write_text("{{ prompt ")
    with pytest.raises(PluginError, match=r"broken.txt:1"):
        GenRMReward(backend="openai", model="j", base_url="http://127.0.0.1:9/v1", template=str(broken))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing but comments\n")
    with pytest.raises(PluginError, match="no principles"):
        load_principles(str(empty))


def test_the_engine_is_a_generation_spec_given_whole_or_by_its_own_option_names(server: JudgeServer) -> None:
    """`generation=` / `sampling=` take the specs themselves; flat options are theirs, validated by them."""
    server.reset()
    engine = {"backend": "openai", "model": "judge", "base_url": server.url, "timeout_s": 5.0, "max_retries": 2,
              "options": {"backoff_s": 0.01}}
    whole = GenRMReward(generation=engine, sampling={"temperature": 0.3, "max_new_tokens": 64})
    flat = GenRMReward(**engine, temperature=0.3, max_new_tokens=64)
    assert whole.spec == flat.spec and whole.sampling == flat.sampling and whole.backend == "openai"
    assert flat.spec.batch_size == GenRMReward.default_batch_size
    assert whole(["answer ok8"], prompts=["case=ok8 Compute 1+1."]) == pytest.approx([0.8])
    assert server.bodies[-1]["temperature"] == 0.3 and server.bodies[-1]["max_tokens"] == 64
    with pytest.raises(PluginError, match=r"unknown option\(s\) \['temprature'\].*temperature"):
        GenRMReward(**engine, temprature=0.3)
    with pytest.raises(PluginError, match="not both"):
        GenRMReward(generation=engine, model="other")
    with pytest.raises(PluginError, match=r"(?s)bad options.*timeout_s"):
        GenRMReward(**{**engine, "timeout_s": -1})


def test_a_template_file_from_the_recipe_replaces_the_built_in(judge: Callable[..., GenRMReward],
                                                               server: JudgeServer, tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("Judge this. {{ prompt }} || {{ completion }}{% if reference %} (ref {{ reference }}){% endif %}"
                    " Score it out of {{ scale }}.")
    reward = judge(template=str(path), scale=5)
    assert reward(["ans"], prompts=["case=ok8 q"], solution=["42"]) == pytest.approx([0.8])  # 8/10 as declared
    assert server.bodies[0]["messages"][-1]["content"] == "Judge this. case=ok8 q || ans (ref 42) Score it out of 5."


def test_chat_completions_and_prompts_are_rendered_as_text() -> None:
    text = render("compact", prompt="Compute 1+2.", completion="<think>1+2=3</think> 3", reference="3")
    assert text == "Compute 1+2.\n<think>1+2=3</think> 3\nReference: 3\nReasoning:"
    reward = GenRMReward(backend="openai", model="j", base_url="http://127.0.0.1:9/v1")
    ((prompt, flipped),) = reward.judge_prompts([{"role": "user", "content": "Compute 1+2."}],
                                                [{"role": "assistant", "content": "3"}])
    assert "Compute 1+2." in prompt and "[Response]\n3" in prompt and not flipped


def test_the_reward_pickles_into_workers(judge: Callable[..., GenRMReward]) -> None:
    reward = judge()
    assert reward(["x"], prompts=["case=ok8 q"]) == pytest.approx([0.8])
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._generator is None and clone(["x"], prompts=["case=ok8 q"]) == pytest.approx([0.8])


# --------------------------------------------------------------------------------------------------
# The `hf` backend: the judge runs in process on the tiny model


def test_hf_backend_on_an_untrained_tiny_model_gives_none_with_its_text(tiny_base: Path) -> None:
    reward = get_reward("genrm", backend="hf", model=str(tiny_base), template="compact", max_new_tokens=6)
    scores, errors = reward.score_with_errors(["<think>1+1=2</think> The answer is \\boxed{2}."] * 2 + ["other"],
                                              prompts=["Compute 1+1."] * 3, solution=["2"] * 3)
    assert scores == [None, None, None]  # random weights write no verdict...
    assert all("unparseable verdict" in e and "the judge wrote:" in e for e in errors)
    assert reward.verifier.judged == 2  # ...and the two identical rows were judged once


# --------------------------------------------------------------------------------------------------
# Self-rewarding: the `policy` backend judges with the live model it is handed


def test_policy_backend_judges_with_the_bound_model_itself(tiny_base: Path) -> None:
    import torch

    from posttrain.core.models import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(str(tiny_base)), load_tokenizer(str(tiny_base), padding_side="left")
    model.train()
    reward = get_reward("genrm", backend="policy", template="compact", max_new_tokens=6, n=2, temperature=1.0,
                        seed=0)
    rows = {"completions": ["<think>1+1=2</think> The answer is \\boxed{2}."], "prompts": ["Compute 1+1."]}
    scores, errors = reward.score_with_errors(**rows)
    assert scores == [None] and "none is bound" in errors[0]  # only a trainer (or the caller) binds the policy

    assert reward.verifier.bind_policy(model, tokenizer)
    assert reward.verifier._generator.model is model  # the object itself: no copy
    rng = torch.get_rng_state()
    first = reward.score_with_errors(**rows)[1][0]
    assert "the judge wrote:" in first  # random weights write no verdict; the error keeps the judge's text
    assert model.training and all(p.grad is None for p in model.parameters())  # eval mode, no grad, restored
    assert torch.equal(torch.get_rng_state(), rng)  # the trainer's random stream is left as it was
    assert reward.score_with_errors(**rows)[1][0] == first  # same weights, same seed: the same verdict...
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    assert reward.score_with_errors(**rows)[1][0] != first  # ...changed weights in place: a new one, never cached

    with pytest.raises(PluginError, match="takes no `model`"):
        GenRMReward(backend="policy", model="judge")
    other = get_reward("genrm", backend="hf", model=str(tiny_base))
    assert other.verifier.bind_policy(model, tokenizer) is False  # only the policy backend takes the live model
