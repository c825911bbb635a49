"""How a CPU GRPO step should use the cores: generation and training in turn (on 2 threads, or on 1), or
overlapping, each on one thread, in two processes or two threads (generation of the next step ahead of
training on this one, one step off-policy).

The work is a GRPO step's, on the tiny recipe's SFT model (runs/bench-grpo, see `grpo_step`): rollouts of
16 prompts x 8 at T = 1, up to 48 tokens, by posttrain's decode loop; then the training side of the step on
those rollouts: the reference model's forward (no gradients), the policy's forward and backward with the
clipped-ratio + k3-KL loss, and an AdamW step. Rewards and TRL's bookkeeping are left out: they are the same
in every layout. Layouts:

- in turn, 2 threads: `torch.set_num_threads(2)`, generate then train (torch's default on 2 cores), with
  OpenMP's default wait policy (an idle thread spins before it sleeps) or `OMP_WAIT_POLICY=PASSIVE` (it
  sleeps at once: nothing burns a core that another job, or the other thread, needs);
- in turn, 1 thread: the same on one thread (the other core idle, or free for other jobs);
- overlapping, 2 processes: a second process (one thread) generates step k+1's rollouts with the weights
  after step k-1 while this one (one thread) trains on step k's; weights go over shared memory each step;
- overlapping, 2 threads: the same with a Python thread and a second copy of the model in this process.

Each layout runs in a fresh process (its wait policy is read when OpenMP starts, and a pool of threads that
spun up must not leak into the next layout), `steps` steps after one warm-up step; its figure is the mean step
time. Layouts run in ABBA order, and the better of the runs counts. On a machine shared with other jobs the
layouts that need both cores lose most: the load average at the start and end is in the note.

    python -m benchmarks.thread_layout [--quick] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import ROOT

#: Each layout: how it runs, its torch threads and the OpenMP wait policy of its process.
LAYOUTS: dict[str, tuple[str, int, str]] = {
    "in turn, 2 threads, passive wait": ("in_turn", 2, "PASSIVE"),
    "in turn, 2 threads, spin-waiting": ("in_turn", 2, ""),
    "in turn, 1 thread": ("in_turn", 1, "PASSIVE"),
    "overlapping, 2 processes of 1 thread": ("processes", 1, "PASSIVE"),
    "overlapping, 2 threads": ("threads", 1, "PASSIVE"),
}
REFERENCE = "in turn, 2 threads, spin-waiting"


class Workload:
    """The SFT model, its reference copy and the prompts; generation and the training step on them."""

    def __init__(self, run_dir: Path, prompts: int, n: int, length: int):
        from posttrain.core.models import load_tokenizer

        self.path = str(run_dir / "sft" / "model")
        self.tok = load_tokenizer(self.path)
        rows = [json.loads(line) for line in (run_dir / "distill" / "prompts.jsonl").read_text().splitlines()]
        self.rows, self.prompts, self.n, self.length = rows, prompts, n, length

    def model(self) -> Any:
        from posttrain.core.models import load_causal_lm

        model = load_causal_lm(self.path)
        model.config.use_cache = True
        return model

    def batch(self, k: int) -> list[list[int]]:
        start = (k * self.prompts) % max(1, len(self.rows) - self.prompts)
        ids = [self.tok(r["prompt"])["input_ids"] for r in self.rows[start:start + self.prompts]]
        return [p for p in ids for _ in range(self.n)]

    def generate(self, model: Any, k: int) -> list[list[int]]:
        import torch

        from posttrain.core.generation.decode import Decoder

        prompts = self.batch(k)
        width, pad = max(map(len, prompts)), self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        torch.manual_seed(k)
        return Decoder(model).generate(ids, mask, self.length, temperature=1.0, eos_token_ids=[self.tok.eos_token_id])

    def train(self, model: Any, ref: Any, optimizer: Any, k: int, completions: list[list[int]]) -> None:
        """The training side of a GRPO step on `completions`: reference forward, policy forward and backward
        (clipped ratio, k3 KL with β 0.04, random advantages), optimizer step."""
        import torch

        seqs = [p + c for p, c in zip(self.batch(k), completions, strict=True)]
        width, pad = max(map(len, seqs)), self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        scored = torch.zeros(ids.shape, dtype=torch.float32)
        for i, c in enumerate(completions):
            scored[i, width - len(c):] = 1
        scored = scored[:, 1:]

        def logps(m: Any) -> torch.Tensor:
            logits = m(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)

        with torch.no_grad():
            ref_logps = logps(ref)
        policy = logps(model)
        advantages = torch.randn(len(seqs), 1, generator=torch.Generator().manual_seed(k))
        ratio = torch.exp(policy - policy.detach())
        clipped = torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.28) * advantages)
        kl = torch.exp(ref_logps - policy) - (ref_logps - policy) - 1
        loss = ((-clipped + 0.04 * kl) * scored).sum() / scored.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _trainer_side(work: Workload) -> tuple[Any, Any, Any]:
    import torch

    model, ref = work.model(), work.model().eval()
    model.train()
    return model, ref, torch.optim.AdamW(model.parameters(), lr=1e-6)


def in_turn(work: Workload, steps: int, threads: int) -> list[float]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, ref, optimizer = _trainer_side(work)
        times = []
        for k in range(steps + 1):
            start = time.perf_counter()
            work.train(model, ref, optimizer, k, work.generate(model, k))
            times.append(time.perf_counter() - start)
        return times[1:]
    finally:
        torch.set_num_threads(before)


def _rollout_worker(conn: Any, shared: dict[str, Any], run_dir: str, sizes: tuple[int, int, int]) -> None:
    """The second process: one thread; load the weights from shared memory, generate, send the rollouts."""
    import torch

    torch.set_num_threads(1)
    work = Workload(Path(run_dir), *sizes)
    model = work.model().eval()
    params = dict(model.named_parameters())
    while (k := conn.recv()) is not None:
        with torch.no_grad():
            for name, tensor in shared.items():
                params[name].copy_(tensor)
        conn.send(work.generate(model, k))


def overlapping_processes(work: Workload, run_dir: Path, steps: int) -> list[float]:
    import torch
    import torch.multiprocessing as mp

    with _threads(1):
        model, ref, optimizer = _trainer_side(work)
        shared = {n: p.detach().clone().share_memory_() for n, p in model.named_parameters()}
        ctx = mp.get_context("spawn")
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_rollout_worker, args=(there, shared, str(run_dir),
                                                         (work.prompts, work.n, work.length)), daemon=True)
        proc.start()
        try:
            here.send(0)
            rollouts = here.recv()
            times = []
            for k in range(steps + 1):
                start = time.perf_counter()
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        shared[name].copy_(p)
                here.send(k + 1)  # the next step's rollouts, generated while this one trains
                work.train(model, ref, optimizer, k, rollouts)
                rollouts = here.recv()
                times.append(time.perf_counter() - start)
            here.send(None)
        finally:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return times[1:]


def overlapping_threads(work: Workload, steps: int) -> list[float]:
    import torch

    with _threads(1):
        model, ref, optimizer = _trainer_side(work)
        sampler = work.model().eval()
        rollouts = work.generate(sampler, 0)
        times = []
        for k in range(steps + 1):
            start = time.perf_counter()
            with torch.no_grad():
                for p, q in zip(model.parameters(), sampler.parameters(), strict=True):
                    q.copy_(p)
            box: dict[str, Any] = {}
            thread = threading.Thread(target=lambda k=k, box=box: box.update(out=work.generate(sampler, k + 1)))
            thread.start()
            work.train(model, ref, optimizer, k, rollouts)
            thread.join()
            rollouts = box["out"]
            times.append(time.perf_counter() - start)
    return times[1:]


@contextlib.contextmanager
def _threads(n: int) -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


FULL = {"prompts": 16, "n": 8, "length": 48, "steps": 6, "repeats": 2}
QUICK = {"prompts": 2, "n": 4, "length": 12, "steps": 2, "repeats": 1}


def measure(layout: str, run_dir: Path, sizes: dict[str, int]) -> list[float]:
    """One layout's step times, in this (fresh) process."""
    how, threads, _ = LAYOUTS[layout]
    work = Workload(run_dir, sizes["prompts"], sizes["n"], sizes["length"])
    if how == "in_turn":
        return in_turn(work, sizes["steps"], threads)
    if how == "processes":
        return overlapping_processes(work, run_dir, sizes["steps"])
    return overlapping_threads(work, sizes["steps"])


def measure_isolated(layout: str, run_dir: Path, sizes: dict[str, int]) -> list[float]:
    """`measure` in a fresh interpreter with the layout's OpenMP wait policy: a thread pool that spun up (or
    a policy read at start-up) in one layout must not leak into the next."""
    _, _, policy = LAYOUTS[layout]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="bench-thread-layout-") as tmp:
        out = Path(tmp) / "times.json"
        cmd = [sys.executable, "-m", "benchmarks.thread_layout", "--layout", layout, "--run-dir", str(run_dir),
               "--sizes", json.dumps(sizes), "--output", str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"layout {layout!r} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def run(quick: bool = False, run_dir: str | None = None) -> dict[str, Any]:
    """Each layout's mean step time, ABBA, the better of `repeats` runs, against spin-waiting 2 threads in turn
    (torch's default on 2 cores)."""
    from benchmarks.grpo_step import trained_run

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sizes = QUICK if quick else FULL
    folder = trained_run(quick, run_dir)
    load = [round(os.getloadavg()[0], 2)]
    names = list(LAYOUTS)
    means: dict[str, list[float]] = {name: [] for name in names}
    for i in range(sizes["repeats"]):
        for name in names if i % 2 == 0 else names[::-1]:
            means[name].append(statistics.fmean(measure_isolated(name, folder, sizes)))
    load.append(round(os.getloadavg()[0], 2))
    best = {name: min(v) for name, v in means.items()}
    rows = [{"name": f"GRPO step work, {name}", "ours": round(best[name], 4), "reference": round(best[REFERENCE], 4),
             "unit": "s/step",
             "note": f"{sizes['prompts']} prompts x {sizes['n']} rollouts of up to {sizes['length']} tokens (decode "
                     f"loop) + reference forward, policy forward/backward, AdamW; mean of {sizes['steps']} steps, "
                     f"better of {sizes['repeats']} run(s) (ABBA), each in a fresh process; reference: 2 threads in "
                     f"turn, spin-waiting; load average {load[0]} -> {load[1]} on {os.cpu_count()} CPU(s)"}
            for name in names]
    return {"rows": rows, "params": {**sizes, "run_dir": str(folder), "cpus": os.cpu_count()},
            "details": {"mean_step_s": {k: [round(x, 4) for x in v] for k, v in means.items()},
                        "load_average": load, "fastest": min(best, key=best.__getitem__)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and briefly trained models: a smoke test")
    parser.add_argument("--run-dir", help="a run folder with the tiny recipe's distill and sft stages done")
    parser.add_argument("--layout", choices=list(LAYOUTS), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.layout:  # one layout, in this fresh process (see measure_isolated)
        args.output.write_text(json.dumps(measure(args.layout, Path(args.run_dir), json.loads(args.sizes))))
        return
    result = run(quick=args.quick, run_dir=args.run_dir)
    for row in result["rows"]:
        print(f"{row['name']:45} {row['ours']:>8} s/step  ({row['ours'] / row['reference']:.2f}x of the reference)")
    print(json.dumps(result["details"], indent=1))


if __name__ == "__main__":
    main()
