"""`make gpu-check`: the GPU paths posttrain cannot test on a CPU, in one run of a few minutes on one GPU, offline.

It builds a ~100M-parameter DeepSeek-V3 from a config (bf16; MLA sizes DeepSeek-V3's own, (128, 64, 128) with
`kv_lora_rank` 512, which vLLM's attention backends take: core/vllm_limits.py) and a tokenizer from the arithmetic
corpus (no hub), distils data with the scripted teacher, then checks, one row each:

  sft            bf16 SFT with the transformers backend: parameters, tokens/s, peak GPU memory
  grpo           bf16 GRPO with transformers rollouts: tokens/s, peak GPU memory
  vllm_greedy    vLLM's greedy completions agree with transformers' on the same bf16 weights: most are identical,
                 and where one differs, the two picks at the first difference are a near-tie under transformers
                 (their kernels differ; one near-tie flips a completion)
  vllm_colocate  3 GRPO steps with colocated vLLM and the router-bias update: vLLM's biases after the last sync
                 equal the trainer's at that sync (and moved from zero), the weight sync accepted, drift logged
  zero3_lora     DeepSpeed ZeRO-3 in one process: SFT with LoRA, save, reload; no empty tensor, bias still fp32
  resume         an SFT stopped by SIGTERM after a checkpoint resumes from it and finishes its steps

Without vLLM the first two still prove the CUDA path of the trainer stages. What is not installed (vLLM, DeepSpeed)
is a row "skipped: not installed", `vllm_colocate` on a GPU whose vLLM MoE kernel re-lays the experts (where the GRPO
stage refuses colocate mode) "skipped: ..."; without a GPU it says so and exits 0.
The vLLM checks run in child processes (`--child NAME`), so each engine's GPU memory is freed when it ends.
Exit status 1 when a check failed. `--device cpu` runs the same code on a CPU at test sizes (the tests do).

    python -m benchmarks.gpu_check [--out DIR] [--only sft,grpo,...] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHECKS = ("sft", "grpo", "vllm_greedy", "vllm_colocate", "zero3_lora", "resume")
ROOT = Path(__file__).resolve().parent.parent
RUN, BF16_COPY = "run", "sft_bf16"


@dataclass(frozen=True)
class Sizes:
    model: dict[str, Any]
    prompts: int
    sft_steps: int
    sft_batch: int
    grpo_steps: int
    grpo_batch: int
    generations: int
    completion: int
    greedy_prompts: int
    resume_steps: int
    child_timeout_s: int


#: ~102M parameters (6 layers, 16 routed experts, MLA with DeepSeek-V3's head sizes, which vLLM builds): small enough
#: for minutes, big enough to load a GPU.
GPU = Sizes(model={"hidden_size": 768, "intermediate_size": 2304, "moe_intermediate_size": 384,
                   "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 8,
                   "n_routed_experts": 16, "num_experts_per_tok": 4, "kv_lora_rank": 512,
                   "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128},
            prompts=2000, sft_steps=150, sft_batch=64, grpo_steps=5, grpo_batch=64, generations=8, completion=64,
            greedy_prompts=64, resume_steps=400, child_timeout_s=300)
CPU = Sizes(model={"num_hidden_layers": 2}, prompts=60, sft_steps=4, sft_batch=8, grpo_steps=2, grpo_batch=8,
            generations=4, completion=16, greedy_prompts=4, resume_steps=12, child_timeout_s=300)


#: vLLM's greedy check: the share of completions that must equal transformers' token for token, and the largest
#: log-probability gap (nats, under transformers) between the two picks where they first differ: bf16 kernels that
#: sum in another order move logits by ~0.01-0.1, so a flip between picks further apart than this is a real bug.
GREEDY_MIN_AGREEMENT = 0.9
GREEDY_MAX_GAP = 0.2


@dataclass
class Row:
    check: str
    status: str  # "ok", "FAIL", or "skipped: why"
    figures: str = ""
    seconds: float = 0.0


class Skip(Exception):
    """A check that cannot run here (not installed, no GPU): a 'skipped' row, never a failure."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="work folder (default: a new temporary folder, removed at the end)")
    p.add_argument("--only", help=f"comma-separated checks (default: all of {', '.join(CHECKS)})")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu runs the same checks at test sizes, fp32 (for the tests)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.checks = CHECKS if not args.only else tuple(c.strip() for c in args.only.split(",") if c.strip())
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        p.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    return args


def table(rows: list[Row]) -> str:
    """One fixed-width table: check, status, figures, seconds."""
    head = ("check", "status", "figures", "s")
    cells = [head, *[(r.check, r.status, r.figures, f"{r.seconds:.0f}") for r in rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(4)).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the recipe --------------------------------------------------------------------------------------------


def recipe(work: Path, s: Sizes, bf16: bool, vllm: bool = False) -> dict[str, Any]:
    """Every stage the checks run, in one recipe (a stage runs only when its check asks for it). The vLLM stage
    starts from the bf16 copy of the SFT model that the vLLM checks write, so it is only in the recipe they use
    (`recipe_vllm.yaml`): a recipe naming a model folder that does not exist yet does not validate."""
    trl = {"bf16": bf16, "logging_steps": 1, "save_steps": 10_000}
    rewards = [{"name": "math"}, {"name": "format", "weight": 0.1, "kwargs": {"strict": True}}]
    grpo_trl = {**trl, "per_device_train_batch_size": s.grpo_batch, "num_generations": s.generations,
                "max_completion_length": s.completion, "learning_rate": 1e-5, "beta": 0.0}
    sft_trl = {**trl, "per_device_train_batch_size": s.sft_batch, "learning_rate": 2e-3}
    return {
        "output_dir": str(work / RUN), "seed": 0,
        "model": {"tiny": s.model, **({"dtype": "bfloat16"} if bf16 else {})},  # GPU: bf16 weights, fp32 biases
        "tokenizer": {"train": {"corpus": "data_pipelines.tasks.arithmetic:corpus"}},
        "stages": [
            {"name": "distill", "kind": "distill",
             "source": {"function": "data_pipelines.tasks.arithmetic:train_prompts", "kwargs": {"n": s.prompts},
                        "keep": ["solution"]},
             "teacher": {"backend": "scripted", "model": "data_pipelines.tasks.arithmetic:teacher"},
             "n": 2, "rewards": rewards, "keep_per_prompt": 1},
            {"name": "sft", "kind": "sft", "data": "distill", "trl": {**sft_trl, "max_steps": s.sft_steps}},
            {"name": "grpo", "kind": "grpo", "model": "sft", "data": "distill", "rewards": rewards,
             "rollout": {"backend": "transformers"}, "trl": {**grpo_trl, "max_steps": s.grpo_steps}},
            *([{"name": "grpo_vllm", "kind": "grpo", "model": str(work / BF16_COPY), "data": "distill",
                "rewards": rewards, "moe_balance": {"bias_update_speed": 0.01},
                "rollout": {"backend": "vllm", "mode": "colocate", "gpu_memory_utilization": 0.3},
                "trl": {**grpo_trl, "max_steps": 3, "vllm_max_model_length": 512}}] if vllm else []),
            {"name": "sft_zero3", "kind": "sft", "model": "sft", "data": "distill", "lora": {"r": 8},
             "moe_balance": {"bias_update_speed": 0.01},
             "launch": {"num_processes": 1, "config_file": str(ROOT / "recipes/accelerate/zero3.yaml")},
             "trl": {**sft_trl, "max_steps": 4}},
            {"name": "sft_resume", "kind": "sft", "model": "sft", "data": "distill",
             "trl": {**sft_trl, "max_steps": s.resume_steps}},
        ],
    }


def run_stages(work: Path, names: list[str]) -> dict[str, Any]:
    """Run these stages of the check's recipe (finished ones are skipped); a failed one raises."""
    if not names:
        return {}
    from posttrain.recipe import load_recipe
    from posttrain.run.runner import run_recipe
    from posttrain.stages import KINDS

    report = run_recipe(load_recipe(work / "recipe.yaml", kinds=KINDS), only=names)
    for name in names:
        entry = report["stages"][name]
        if entry["status"] == "failed":
            raise RuntimeError(f"stage {name} failed: {entry['metrics'].get('error')}")
    return report


def metrics(work: Path, stage: str) -> list[dict[str, Any]]:
    from posttrain.core.run_folder import METRICS_FILE, read_jsonl

    return read_jsonl(work / RUN / stage / METRICS_FILE)


def throughput(work: Path, stage: str, device: str) -> str:
    """Tokens/s over the stage's training (TRL's `num_tokens` / transformers' `train_runtime`), peak memory (GPU:
    allocated by torch; CPU: the process's resident set)."""
    rows = metrics(work, stage)
    tokens = max((r["num_tokens"] for r in rows if isinstance(r.get("num_tokens"), int | float)), default=0)
    runtime = next((r["train_runtime"] for r in reversed(rows) if r.get("train_runtime")), None)
    out = f"{tokens / runtime:,.0f} tokens/s" if tokens and runtime else "tokens/s: not logged"
    if device == "cuda":
        import torch

        return out + f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    import resource

    return out + f", peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def parameters(model_dir: Path) -> str:
    """`102.3M params, bf16`: the saved model's size and dtype, read from its safetensors headers."""
    from safetensors import safe_open

    count, dtypes = 0, set()
    for f in model_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                piece = st.get_slice(name)
                shape = piece.get_shape()
                count += math.prod(shape)
                dtypes.add(piece.get_dtype())
    return f"{count / 1e6:.1f}M params, {'/'.join(sorted(dtypes)).lower()}"


# -- checks in this process ------------------------------------------------------------------------------------


def check_trainer(stage: str, before: list[str]) -> Callable[[Path, Sizes, str], str]:
    def check(work: Path, s: Sizes, device: str) -> str:
        run_stages(work, before)  # done ones are skipped
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        run_stages(work, [stage])
        size = f"{parameters(work / RUN / stage / 'model')}, " if stage == "sft" else ""
        return size + throughput(work, stage, device)

    return check


def check_resume(work: Path, s: Sizes, device: str) -> str:
    """SIGTERM a real `posttrain run` after its first logged step (it saves a checkpoint and stops), run it again:
    it must resume from that checkpoint and finish its steps."""
    run_stages(work, ["sft"])
    metrics_file = work / RUN / "sft_resume" / "metrics.jsonl"
    cmd = [sys.executable, "-m", "posttrain.cli", "run", str(work / "recipe.yaml"), "--stages", "sft_resume"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + s.child_timeout_s
    while time.time() < deadline and proc.poll() is None and not (metrics_file.exists() and metrics_file.read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=s.child_timeout_s)
    if proc.returncode != 130:
        raise RuntimeError(f"the stopped run exited {proc.returncode}, not 130 (stopped gracefully): {err[-500:]}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=s.child_timeout_s, cwd=ROOT)
    resumed = [line for line in done.stderr.splitlines() if "resuming from" in line]
    if done.returncode != 0 or not resumed:
        raise RuntimeError(f"the second run did not resume (exit {done.returncode}): {done.stderr[-500:]}")
    steps = json.loads((work / RUN / "report.json").read_text())["stages"]["sft_resume"]["metrics"]["steps"]
    if steps != s.resume_steps:
        raise RuntimeError(f"the resumed run ended at step {steps}, not {s.resume_steps}")
    return f"stopped, resumed from {resumed[-1].rsplit('/', 1)[-1]}, finished at step {steps}"


def check_zero3(work: Path, s: Sizes, device: str) -> str:
    """ZeRO-3 in one process (accelerate launch): SFT with LoRA, save (merged), reload."""
    if importlib.util.find_spec("deepspeed") is None:
        raise Skip("not installed (POSTTRAIN_EXTRAS=dev,deepspeed make setup)")
    if device != "cuda":
        raise Skip("needs a GPU")
    import torch
    from safetensors.torch import load_file

    from posttrain.core.models import load_causal_lm

    run_stages(work, ["sft", "sft_zero3"])  # sft_zero3 runs under `accelerate launch` with the ZeRO-3 config
    out = work / RUN / "sft_zero3" / "model"
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(f))
    empty = [n for n, t in tensors.items() if t.numel() == 0]
    biases = {n: t.dtype for n, t in tensors.items() if n.endswith("e_score_correction_bias")}
    if empty or not biases or set(biases.values()) != {torch.float32}:
        raise RuntimeError(f"saved model: {len(empty)} empty tensors {empty[:3]}, router biases {biases}")
    model = load_causal_lm(str(out))
    reloaded = {n: b.dtype for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")}
    if set(reloaded.values()) != {torch.float32}:
        raise RuntimeError(f"reloaded router biases are {reloaded}")
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError("reloaded model gives non-finite logits")
    return f"{len(tensors)} tensors, none empty; {len(biases)} router biases fp32 after reload"


def bf16_copy(work: Path) -> Path:
    """The SFT model in bf16 (router biases stay fp32): what vLLM and transformers both load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = work / BF16_COPY
    if not (out / "config.json").exists():
        src = work / RUN / "sft" / "model"
        AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(out)
        AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def check_in_child(name: str) -> Callable[[Path, Sizes, str], str]:
    """A vLLM check, run in its own process after the SFT model it needs exists."""

    def check(work: Path, s: Sizes, device: str) -> str:
        if importlib.util.find_spec("vllm") is None:
            raise Skip("not installed (POSTTRAIN_EXTRAS=dev,vllm make setup)")
        if device != "cuda":
            raise Skip("needs a GPU")
        import torch

        from posttrain.core.vllm_limits import current_gpu, moe_relayout

        if name == "vllm_colocate" and (relaid := moe_relayout(*current_gpu())) is not None:
            raise Skip(f"the GRPO stage refuses colocate mode for MoE models here: {relaid}")
        run_stages(work, ["sft"])
        bf16_copy(work)
        torch.cuda.empty_cache()  # what this process cached is free for the child's vLLM engine
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", name, "--out", str(work)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=s.child_timeout_s, cwd=ROOT)
        last = (done.stdout.strip().splitlines() or [""])[-1]
        try:
            result = json.loads(last)
        except ValueError:
            raise RuntimeError(f"child exited {done.returncode}: {done.stderr[-800:]}") from None
        if not result.get("ok"):
            raise RuntimeError(result.get("detail", "failed"))
        return result["detail"]

    return check


CHECK_FUNCTIONS: dict[str, Callable[[Path, Sizes, str], str]] = {
    "sft": check_trainer("sft", []), "grpo": check_trainer("grpo", ["sft"]),
    "vllm_greedy": check_in_child("vllm_greedy"), "vllm_colocate": check_in_child("vllm_colocate"),
    "zero3_lora": check_zero3, "resume": check_resume,
}


# -- checks in a child process (vLLM) ----------------------------------------------------------------------


def child_vllm_greedy(work: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    from posttrain.core.run_folder import PROMPTS_FILE, read_jsonl

    path, n, length = work / BF16_COPY, GPU.greedy_prompts, 48
    tok = AutoTokenizer.from_pretrained(path)
    rows = read_jsonl(work / RUN / "distill" / PROMPTS_FILE)[:n]
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False) for r in rows]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()  # kept: it scores ties
    ours = []
    with torch.inference_mode():
        for ids in prompts:
            out = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=length, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            ours.append(_until_eos(out[0, len(ids):].tolist(), tok.eos_token_id))
    torch.cuda.empty_cache()
    llm = LLM(model=str(path), dtype="bfloat16", gpu_memory_utilization=0.3, enforce_eager=True, max_model_len=512,
              seed=0)
    greedy = SamplingParams(temperature=0.0, max_tokens=length)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], greedy)
    theirs = [_until_eos(list(o.outputs[0].token_ids), tok.eos_token_id) for o in outs]

    def next_logprobs(ids: list[int]) -> Any:
        with torch.inference_mode():
            return model(torch.tensor([ids], device="cuda")).logits[0, -1].float().log_softmax(-1).cpu()

    ok, detail = compare_greedy(prompts, ours, theirs, next_logprobs, tok.eos_token_id)
    return {"ok": ok, "detail": detail}


def compare_greedy(prompts: list[list[int]], ours: list[list[int]], theirs: list[list[int]],
                   next_logprobs: Callable[[list[int]], Any], eos: int,
                   min_agreement: float = GREEDY_MIN_AGREEMENT, max_gap: float = GREEDY_MAX_GAP) -> tuple[bool, str]:
    """(passed, figures) of two engines' greedy completions (token ids, up to EOS) of the same prompts: the share
    that is identical, and at each first difference the gap |log p(ours) - log p(theirs)| under `next_logprobs`
    (the reference model's next-token log-probabilities after `prompt + common prefix`)."""
    gaps: list[tuple[float, int, int]] = []  # (gap, prompt, position)
    for i, (prompt, a, b) in enumerate(zip(prompts, ours, theirs, strict=True)):
        a, b = [*a, eos], [*b, eos]  # a completion that stops earlier picked EOS where the other went on
        j = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if j is None:
            continue
        logp = next_logprobs(list(prompt) + a[:j])
        gaps.append((abs(float(logp[a[j]]) - float(logp[b[j]])), i, j))
    same = len(prompts) - len(gaps)
    agreement = same / len(prompts) if prompts else 1.0
    detail = f"{same}/{len(prompts)} greedy completions identical"
    if gaps:
        worst = max(gaps)
        detail += (f"; where they first differ, the two picks are at most {worst[0]:.3f} nats apart under "
                   f"transformers (prompt {worst[1]}, token {worst[2]}; pass: <= {max_gap:g} nats and >= "
                   f"{min_agreement:.0%} identical)")
    return agreement >= min_agreement and all(g <= max_gap for g, _, _ in gaps), detail


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def child_vllm_colocate(work: Path) -> dict[str, Any]:
    import logging

    from posttrain.core.run_folder import ROLLOUT_LOGP_DIFF
    from posttrain.recipe import load_recipe
    from posttrain.run.base_model import base_model_ref
    from posttrain.stages import KINDS
    from posttrain.stages.base import StageContext
    from posttrain.stages.grpo import GRPOStage

    class Probe(GRPOStage):
        def after_init(self, trainer: Any, dataset: Any) -> None:
            super().after_init(trainer, dataset)
            self.trainer = trainer

    run_dir = work / RUN
    rec = load_recipe(work / "recipe_vllm.yaml", kinds=KINDS)
    ctx = StageContext(rec, rec.stage("grpo_vllm"), run_dir, base_model_ref(rec, run_dir),
                       logging.getLogger("posttrain.grpo_vllm"))
    stage = Probe(ctx)
    result = stage.run()
    generation = stage.trainer.vllm_generation
    engine_model = generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    in_vllm = {n: p.detach().float().cpu() for n, p in engine_model.named_parameters()
               if n.endswith("e_score_correction_bias")}
    synced = {n: t.float().cpu() for n, t in generation.last_synced_biases.items()}
    if not synced or set(in_vllm) != set(synced):
        return {"ok": False, "detail": f"router biases: vLLM has {sorted(in_vllm)[:2]}..., sent {sorted(synced)[:2]}"}
    diff = max(float((in_vllm[n] - synced[n]).abs().max()) for n in synced)
    moved = max(float(t.abs().max()) for t in synced.values())
    drift = result.metrics.get("rollout_logp_diff_mean")
    rows = [r for r in stage.ctx.stage_dir.joinpath("metrics.jsonl").read_text().splitlines() if ROLLOUT_LOGP_DIFF in r]
    detail = (f"{len(synced)} router biases: max |vLLM - trainer at last sync| = {diff:.2g}, "
              f"max |bias| = {moved:.3g}; logp diff {drift} ({len(rows)} rows)")
    return {"ok": diff == 0.0 and moved > 0, "detail": detail}


CHILDREN: dict[str, Callable[[Path], dict[str, Any]]] = {
    "vllm_greedy": child_vllm_greedy, "vllm_colocate": child_vllm_colocate}


# -- main ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        try:
            result = CHILDREN[args.child](Path(args.out))
        except Exception as exc:
            result = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no GPU found (torch.cuda.is_available() is False): nothing to check here. "
              "Run it on a machine with a CUDA GPU; the CPU paths are covered by `make test`.")
        return 0
    sizes = GPU if args.device == "cuda" else CPU
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="posttrain-gpu-check-"))
    shutil.rmtree(work / RUN, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    for name, vllm in (("recipe.yaml", False), ("recipe_vllm.yaml", True)):
        (work / name).write_text(yaml.safe_dump(recipe(work, sizes, args.device == "cuda", vllm), sort_keys=False))
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"gpu-check on {device}, work folder {work}", flush=True)
    start = time.perf_counter()
    run_stages(work, ["distill"])  # the data every check trains on (scripted teacher, no GPU)
    rows = [run_check(name, work, sizes, args.device) for name in args.checks]
    print(table(rows))
    print(f"total {time.perf_counter() - start:.0f} s")
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r.status == "FAIL" for r in rows) else 0


def run_check(name: str, work: Path, sizes: Sizes, device: str) -> Row:
    start = time.perf_counter()
    print(f"gpu-check: {name} ...", flush=True)
    try:
        figures, status = CHECK_FUNCTIONS[name](work, sizes, device), "ok"
    except Skip as why:
        figures, status = "", f"skipped: {why}"
    except Exception as exc:
        figures, status = " ".join(f"{type(exc).__name__}: {exc}".split())[:400], "FAIL"
    return Row(name, status, figures, time.perf_counter() - start)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
