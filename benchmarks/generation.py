"""Tokens/s of rollout generation: our `hf` backend against plain transformers `model.generate`, in one run.

Both generate from the same tiny DeepSeek-V3 (posttrain/core/tiny.py, saved with `save_pretrained` and
loaded back, as a run does), on the same arithmetic prompts, with the same settings: batch (sequences
per `generate` call), `max_new_tokens`, temperature, top-p, top-k off, KV cache on. Ours is
`HFGenerator.from_pretrained(path, spec)` (`posttrain/core/generation/`: renders, tokenizes, buckets by
length, pads left, seeds, decodes with posttrain's decode loop, truncates at stop strings); the reference
is transformers as its docs show it: `tokenizer(prompts, padding=True)` -> `model.generate(...)` ->
`batch_decode`, chunked to the same batch. The model is untrained, so where it would stop is chance: its
end-of-sequence token is one it cannot generate, and every completion of both runs to `max_new_tokens`
(ours counted from the backend's token counts, the reference's from `generate`'s output tensor, and
checked to be equal). No row finishes early, so this measures the loop's cost per token; the SFT model's
rollouts, whose rows end at different lengths, are in `grpo_step`. Greedy outputs of both must be identical.

Calls alternate ours / reference / reference / ours after one warm-up call each; a method's
figure is tokens per call over its median call time (every call makes the same number of tokens).

Cases: GRPO-style rollouts (16 prompts × 8 samples at T = 1, 48 new tokens, one batch of 128),
greedy evaluation (128 prompts in batches of 64), and long completions (4 × 4 samples, 256 new
tokens). A vLLM row is added when vLLM and a GPU are present (otherwise it says it was skipped): our `vllm` backend
against plain `model.generate` on the GPU, both in bf16 on the tiny model with DeepSeek-V3's MLA head sizes
(`VLLM_SIZES`: vLLM 0.31 builds no MLA attention with the tiny model's (16, 16, 32), nor in fp32).

    python -m benchmarks.generation [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import one_thread


@dataclass(frozen=True)
class Case:
    """One generation workload: `prompts` × `n` completions, `batch` sequences per `generate` call (all of them
    in one call when None)."""

    name: str
    prompts: int
    n: int
    temperature: float
    max_new_tokens: int
    batch: int | None = None

    @property
    def batch_size(self) -> int:
        return self.batch or self.prompts * self.n

    @property
    def label(self) -> str:
        mode = "greedy" if self.temperature == 0 else f"T={self.temperature:g}"
        batch = "one batch" if self.batch is None else f"batch {self.batch}"
        return f"{self.prompts} prompts x {self.n} ({mode}), up to {self.max_new_tokens} new tokens, {batch}"


FULL_CASES = (
    Case("GRPO rollouts", prompts=16, n=8, temperature=1.0, max_new_tokens=48, batch=128),
    Case("greedy eval", prompts=128, n=1, temperature=0.0, max_new_tokens=48, batch=64),
    Case("long completions", prompts=4, n=4, temperature=1.0, max_new_tokens=256, batch=16),
)
QUICK_CASES = (
    Case("GRPO rollouts", prompts=4, n=4, temperature=1.0, max_new_tokens=16, batch=16),
    Case("greedy eval", prompts=16, n=1, temperature=0.0, max_new_tokens=16, batch=8),
    Case("long completions", prompts=2, n=2, temperature=1.0, max_new_tokens=64, batch=4),
)


class TokenCounter:
    """Wraps a model's `generate` (an instance attribute, removed by `close`) to count the new tokens it makes.

    Counted on the output tensor, the same way for both methods (re-tokenizing decoded text would not
    round-trip random tokens). With end-of-sequence off there is no padding after a finished sequence,
    so every new position is a generated token.
    """

    def __init__(self, model: Any):
        self.model = model
        self.inner = model.generate
        self.tokens = 0
        model.generate = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        prompt_len = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        self.tokens += out[:, prompt_len:].numel()
        return out

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            del self.model.generate


#: The tiny model's overrides for the vLLM row: DeepSeek-V3's MLA head sizes, which vLLM's attention backends take.
VLLM_SIZES = {"kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}


def build_model(out: Path, seed: int = 0, overrides: dict[str, Any] | None = None) -> Path:
    """The tiny DeepSeek-V3 with the arithmetic tokenizer, saved to `out` (what a tiny run's base_model holds),
    with end-of-sequence switched off so that every completion has `max_new_tokens` tokens."""
    from data_pipelines.tasks.arithmetic import corpus
    from posttrain.core.tiny import build_tiny_model, train_tokenizer

    tokenizer = train_tokenizer(corpus(), 512)
    model = build_tiny_model(tokenizer, overrides, seed=seed)
    model.config.eos_token_id = None
    model.generation_config.eos_token_id = None
    tokenizer.add_special_tokens({"eos_token": "<|never|>"})  # an id past the model's vocabulary: never generated
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class PlainGenerate:
    """The reference: transformers `generate` as documented, chunked to the same batch as ours."""

    def __init__(self, path: Path, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        self.model.to("cuda" if torch.cuda.is_available() else "cpu")  # where our hf backend puts it
        self.model.eval()

    def generate(self, prompts: list[str], case: Case, seed: int) -> list[list[str]]:
        import torch

        tok = self.tokenizer
        per_call = max(1, case.batch_size // case.n)
        greedy = case.temperature == 0
        sampling: dict[str, Any] = ({"do_sample": False} if greedy else
                                    {"do_sample": True, "temperature": case.temperature, "top_p": 1.0, "top_k": 0})
        out: list[list[str]] = []
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start:start + per_call]
            if not greedy:
                torch.manual_seed(seed + start)
            enc = tok(chunk, padding=True, return_tensors="pt").to(self.model.device)
            seqs = self.model.generate(**enc, max_new_tokens=case.max_new_tokens, num_return_sequences=case.n,
                                       pad_token_id=tok.pad_token_id, **sampling)
            texts = tok.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [texts[i * case.n:(i + 1) * case.n] for i in range(len(chunk))]
        return out


def measure(case: Case, ours: Any, reference: PlainGenerate, prompts: list[str], repeats: int,
            seed: int) -> dict[str, Any]:
    """Warm both up, then `repeats` timed calls each in ABBA order; tokens and seconds per method."""
    from posttrain.core.generation import SamplingParams

    sampling = SamplingParams(temperature=case.temperature, top_p=1.0, max_new_tokens=case.max_new_tokens, seed=seed)
    counter = TokenCounter(reference.model)
    calls = {"ours": lambda: ours.generate(prompts, case.n, sampling),
             "reference": lambda: reference.generate(prompts, case, seed)}
    counts = {"ours": lambda: sum(sum(row) for row in ours.last_lengths), "reference": lambda: counter.tokens}
    try:
        first = {name: call() for name, call in calls.items()}  # warm-up (and the outputs compared below)
        totals = {name: {"tokens": 0, "seconds": 0.0, "per_call_s": []} for name in calls}
        order = [("ours", "reference"), ("reference", "ours")]
        for i in range(repeats):
            for name in order[i % 2]:
                before = counter.tokens
                start = time.perf_counter()
                calls[name]()
                seconds = time.perf_counter() - start
                totals[name]["seconds"] += seconds
                totals[name]["tokens"] += counts[name]() - (before if name == "reference" else 0)
                totals[name]["per_call_s"].append(seconds)
    finally:
        counter.close()
    for t in totals.values():
        t["mean_tokens_per_s"] = t["tokens"] / t["seconds"]
        # Every call makes the same number of tokens; the median call is robust to bursts of load from other jobs.
        t["tokens_per_s"] = t["tokens"] / len(t["per_call_s"]) / statistics.median(t["per_call_s"])
        t["seconds"] = round(t["seconds"], 4)
    if case.temperature == 0:
        totals["greedy_outputs_match"] = first["ours"] == first["reference"]
    totals["shape_ok"] = all(len(first[k]) == len(prompts) and all(len(r) == case.n for r in first[k])
                             for k in ("ours", "reference"))
    totals["tokens_per_call"] = case.prompts * case.n * case.max_new_tokens
    totals["same_token_count"] = totals["ours"]["tokens"] == totals["reference"]["tokens"]
    return totals


def vllm_row(root: Path, case: Case, prompts: list[str], repeats: int, seed: int) -> dict[str, Any]:
    """Our vLLM backend against plain `model.generate` on the rollout case, both on the GPU in bf16 on the tiny model
    with `VLLM_SIZES`, when vLLM and a GPU are here; else a row saying why not."""
    import torch

    name = f"vLLM backend, {case.name}"
    why = ("vLLM is not installed" if importlib.util.find_spec("vllm") is None
           else "no GPU" if not torch.cuda.is_available() else None)
    if why:
        return {"name": name, "ours": None, "reference": None, "unit": "tokens/s",
                "note": f"skipped: {why} (pip install 'posttrain[vllm]' on a GPU machine)"}
    from posttrain.core.generation import GenerationSpec, SamplingParams, make_generator

    path = build_model(root / "model_vllm", seed, VLLM_SIZES)
    reference = PlainGenerate(path, dtype="bfloat16")
    reference.generate(prompts, case, seed)  # warm-up
    ref_calls = []
    for _ in range(repeats):  # every call makes prompts x n x max_new_tokens tokens (end-of-sequence is off)
        start = time.perf_counter()
        reference.generate(prompts, case, seed)
        ref_calls.append(time.perf_counter() - start)
    del reference
    torch.cuda.empty_cache()
    reference_rate = case.prompts * case.n * case.max_new_tokens / statistics.median(ref_calls)
    gen = make_generator(GenerationSpec(backend="vllm", model=str(path), dtype="bfloat16",
                                        options={"gpu_memory_utilization": 0.3}))
    sampling = SamplingParams(temperature=case.temperature, top_p=1.0, max_new_tokens=case.max_new_tokens, seed=seed)
    gen.generate(prompts, case.n, sampling)
    tokens, seconds = 0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        outs = gen.generate(prompts, case.n, sampling)
        seconds += time.perf_counter() - start
        tokens += sum(len(gen.tokenizer(c, add_special_tokens=False)["input_ids"]) for row in outs for c in row)
    return {"name": name, "ours": round(tokens / seconds, 1), "reference": round(reference_rate, 1),
            "unit": "tokens/s", "note": f"{case.label}; tokens re-counted from the text (approximate); tiny "
                                        "DeepSeek-V3 with DeepSeek-V3's MLA head sizes, bf16, on the GPU; reference: "
                                        f"plain HF generate, median of {repeats} calls"}


def run(quick: bool = False, repeats: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Measure our hf backend vs plain `model.generate` per case; return the `benchmarks` result dict."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from data_pipelines.tasks.arithmetic import eval_prompts
    from posttrain.core.generation import GenerationSpec, HFGenerator

    cases = QUICK_CASES if quick else FULL_CASES
    repeats = repeats or (2 if quick else 6)
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp, one_thread():
        path = build_model(Path(tmp) / "model", seed)
        reference = PlainGenerate(path)
        pool = [r["prompt"] for r in eval_prompts(max(c.prompts for c in cases), seed)]
        for case in cases:
            ours = HFGenerator.from_pretrained(str(path), GenerationSpec(backend="hf", model=str(path),
                                                                         batch_size=case.batch_size))
            result = measure(case, ours, reference, pool[:case.prompts], repeats, seed)
            details[case.name] = {"case": asdict(case), **result}
            note = (f"{case.label}; median of {repeats} timed calls each (ABBA) after a warm-up; untrained tiny "
                    f"DeepSeek-V3 (~1.1M params), torch on 1 thread; reference: tokenizer -> model.generate -> "
                    f"batch_decode; no completion ends early (end-of-sequence off)")
            if "greedy_outputs_match" in result:
                note += f"; greedy outputs identical: {result['greedy_outputs_match']}"
            rows.append({"name": f"hf backend, {case.name}", "ours": round(result["ours"]["tokens_per_s"], 1),
                         "reference": round(result["reference"]["tokens_per_s"], 1), "unit": "tokens/s",
                         "note": note})
        rollout = cases[0]
        rows.append(vllm_row(Path(tmp), rollout, pool[:rollout.prompts], repeats, seed))
    return {"rows": rows, "params": {"quick": quick, "repeats": repeats, "seed": seed, "torch_threads": 1,
                                     "cases": [asdict(c) for c in cases]},
            "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases: a smoke test")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args()
    result = run(quick=args.quick, repeats=args.repeats)
    for row in result["rows"]:
        ratio = (f"{row['ours'] / row['reference']:.2f}x" if row["ours"] and row["reference"] else "—")
        print(f"{row['name']:32} ours {row['ours']!s:>10}  reference {row['reference']!s:>10}  {ratio:>6}  "
              f"{row['unit']}\n{'':32} {row['note']}")
    print(json.dumps(result["details"], indent=1))


if __name__ == "__main__":
    main()
