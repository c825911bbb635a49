"""A tiny DeepSeek-V3 that has learned to call the python tool: real tool calls from a real model, for the tests of
the tool loop, the eval and GRPO stages and the sandbox's tool-call attacks.

It is the tiny tokenizer with DeepSeek-V3's tool-call tokens and a 2-layer model trained (plain PyTorch, a few
seconds) until it writes, for each prompt of `PROGRAMS`, the turn that calls `python` with that program, and after
the tool's output the answer it was shown. Greedy decoding reproduces the turns; sampling at T = 1 mostly does.
The tool outputs it was trained on are the sandbox's real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Prompt -> the program the model runs for it, and what it answers after the output.
PROGRAMS: dict[str, tuple[str, str]] = {
    "Compute 12*34.": ("print(12*34)", "The answer is \\boxed{408}."),
    "Compute 56*78.": ("print(56*78)", "The answer is \\boxed{4368}."),
    "Divide by zero.": ("print(1/0)", "The program failed."),
    "Spin forever.": ("while True: pass", "The program failed."),
    "Flood the output.": ("print('x' * 100000)", "Too much."),
}
THOUGHT = "<think>Run it.</think>"
#: Tool limits the model was trained with (and the tests use).
TIMEOUT_S, MAX_OUTPUT_CHARS = 1.0, 200


def conversation(prompt: str, output: str) -> list[dict[str, Any]]:
    code, answer = PROGRAMS[prompt]
    call = {"type": "function", "function": {"name": "python", "arguments": {"code": code}}}
    return [{"role": "user", "content": prompt},
            {"role": "assistant", "content": THOUGHT, "tool_calls": [call]},
            {"role": "tool", "name": "python", "content": output},
            {"role": "assistant", "content": answer}]


def build_tool_model(out: Path, steps: int = 150) -> Path:
    from benchmarks import fit_conversations
    from data_pipelines.tasks.multiplication import corpus
    from posttrain.core.tiny import build_tiny_model, train_tokenizer
    from rewards.sandbox.tool import SandboxTool

    tok = train_tokenizer(corpus(300), 512, tool_calls=True)
    model = build_tiny_model(tok, {"num_hidden_layers": 2}, seed=0)
    tool = SandboxTool("python", timeout_s=TIMEOUT_S, max_output_chars=MAX_OUTPUT_CHARS)
    fit_conversations(model, tok, [conversation(p, tool(code=code)) for p, (code, _) in PROGRAMS.items()], steps)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
