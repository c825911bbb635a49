"""Rows/s of the `math` reward against a plain math-verify loop, on the same GRPO-shaped rows, in one run.

The rows imitate what GRPO scores: P prompts × G completions per prompt, R1-style (a long `<think>`
block full of LaTeX, then an answer), mixed correct and wrong, answers written in equivalent forms
(`\\frac{3}{4}` / `0.75` / `3/4`, `(x+1)^2` / `x^2+2x+1`, units, percent, intervals, tuples), some
without a box, some cut off inside the reasoning. Each row carries the truth by construction, so
both methods get an accuracy as well as a speed.

The plain loop is math-verify as its README shows it: `verify(parse(gold), parse(completion))` per
row, in this process's main thread (its signal-based timeouts on). Ours is `get_reward("math")`
with its default worker processes, called once per GRPO step (`prompts_per_step` × G rows); its
workers are started by a warm-up call on other rows, as they are once per training run. TRL's
`accuracy_reward` is measured too, as a second reference.

    python -m benchmarks.math_reward [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from typing import Any

Problem = tuple[str, list[str], list[str]]  # gold, equivalent forms a model may write, wrong answers it may give


def _integer(rng: random.Random) -> Problem:
    n = rng.randint(10, 9999)
    return str(n), [str(n), f"{n}.0", f"{n} "], [str(n + 1), str(2 * n), str(n // 10)]


def _fraction(rng: random.Random) -> Problem:
    b = rng.choice([3, 4, 5, 6, 7, 8, 9, 11, 12])
    a = rng.choice([k for k in range(1, 3 * b) if math.gcd(k, b) == 1])
    right = [rf"\frac{{{a}}}{{{b}}}", rf"\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", rf"\frac{{{2 * a}}}{{{2 * b}}}"]
    if b in (4, 5, 8):
        right.append(str(a / b))
    return rf"\frac{{{a}}}{{{b}}}", right, [rf"\frac{{{b}}}{{{a}}}", rf"\frac{{{a + 1}}}{{{b}}}", f"{a / b + 0.1:.2f}"]


def _decimal(rng: random.Random) -> Problem:
    n = rng.randint(11, 999)
    x = n / 10 if n % 10 else (n + 1) / 10
    return str(x), [str(x), rf"\frac{{{round(x * 10)}}}{{10}}", f"{x:.2f}"], [str(x + 1), str(x / 10), f"{x:.0f}"]


def _surd(rng: random.Random) -> Problem:
    k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
    return (rf"{k}\sqrt{{{m}}}", [rf"{k}\sqrt{{{m}}}", rf"\sqrt{{{k * k * m}}}", rf"{k} \sqrt {m}"],
            [rf"{k + 1}\sqrt{{{m}}}", rf"{k}\sqrt{{{m + 1}}}", str(k * m)])


def _square(rng: random.Random) -> Problem:
    a = rng.randint(2, 9)
    return (f"x^2+{2 * a}x+{a * a}", [f"(x+{a})^2", f"x^2 + {2 * a}x + {a * a}", f"{a * a} + {2 * a}x + x^2"],
            [f"(x-{a})^2", f"x^2+{a * a}", f"x^2+{2 * a}x"])


def _interval(rng: random.Random) -> Problem:
    a = rng.randint(-9, 5)
    b = a + rng.randint(1, 9)
    return (f"[{a}, {b})", [f"[{a},{b})", f"[{a}, {b})", rf"\left[{a}, {b}\right)"],
            [f"({a}, {b})", f"[{a}, {b}]", f"[{a}, {b + 1})"])


def _point(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return (f"({a}, -{b})", [f"({a},-{b})", f"({a}, -{b})", rf"\left({a}, -{b}\right)"],
            [f"(-{b}, {a})", f"({a}, {b})", f"({a}, -{b + 1})"])


def _length(rng: random.Random) -> Problem:
    n = rng.randint(2, 99)
    return (rf"{n}\text{{ cm}}", [str(n), rf"{n}\text{{ cm}}", rf"{n} \mathrm{{cm}}"],
            [str(n + 1), str(n * n), rf"{n + 2}\text{{ cm}}"])


def _percent(rng: random.Random) -> Problem:
    p = rng.choice([k for k in range(2, 99) if k != 50])
    return rf"{p}\%", [rf"{p}\%", str(p), rf"{p} \%"], [rf"{p + 5}\%", str(100 - p), rf"{p / 10}\%"]


def _angle(rng: random.Random) -> Problem:
    k = rng.choice([3, 4, 5, 6, 8, 12])
    return (rf"\frac{{\pi}}{{{k}}}", [rf"\frac{{\pi}}{{{k}}}", rf"\pi/{k}", rf"\frac{{1}}{{{k}}}\pi"],
            [rf"\frac{{\pi}}{{{k + 1}}}", rf"\frac{{\pi}}{{{2 * k}}}", str(180 // k)])


def _negative(rng: random.Random) -> Problem:
    n = rng.randint(2, 99)
    return f"-{n}", [f"-{n}", f"-{n}.0", f"- {n}"], [str(n), f"-{n - 1}", f"-{n + 1}"]


def _set(rng: random.Random) -> Problem:
    a, b = sorted(rng.sample(range(-9, 10), 2))
    return (rf"\{{{a}, {b}\}}", [rf"\{{{a},{b}\}}", rf"\{{{b}, {a}\}}", rf"\{{{a}, {b}\}}"],
            [rf"\{{{a}, {b + 1}\}}", rf"\{{{a}\}}", rf"\{{{a},{b},{b + 2}\}}"])


def _matrix(rng: random.Random) -> Problem:
    a, b, c, d = (rng.randint(-9, 9) for _ in range(4))
    def m(w: int, x: int, y: int, z: int, sep: str = "&") -> str:
        return rf"\begin{{pmatrix}}{w}{sep}{x}\\{y}{sep}{z}\end{{pmatrix}}"
    return m(a, b, c, d, " & "), [m(a, b, c, d), m(a, b, c, d, " & ")], [m(a, c, b, d + 1), m(a, b, c, d + 1)]


def _power(rng: random.Random) -> Problem:
    k = rng.randint(10, 20)
    return str(2**k), [str(2**k), f"2^{{{k}}}", f"{2**k:,}"], [str(2**k - 1), f"2^{{{k + 1}}}", str(2 * k)]


def _mixed(rng: random.Random) -> Problem:
    n = rng.randint(1, 9)
    return (rf"\frac{{{2 * n + 1}}}{{2}}", [f"{n}.5", rf"\frac{{{2 * n + 1}}}{{2}}", rf"{n}\frac{{1}}{{2}}"],
            [str(n), rf"\frac{{2}}{{{2 * n + 1}}}", str(2 * n + 1)])


PROBLEMS = [_integer, _fraction, _decimal, _surd, _square, _interval, _point, _length, _percent, _angle,
            _negative, _set, _matrix, _power, _mixed]

_STEPS = [
    r"Let $a = {u}$ and $b = {v}$. Then $a + b = {s}$ and $a \cdot b = {p}$.",
    r"We have $\frac{{{u}}}{{{v}}} = \frac{{{p}}}{{{q}}}$, so multiply both sides by ${v}$.",
    r"Substituting, $f({u}) = {u}^2 - {v} = {r}$, which is not what we want yet.",
    r"Check: $\sqrt{{{q}}} \approx {w}$ and ${u} \times {v} = {p}$, consistent with the constraint.",
    r"Hmm, wait. If $x = {u}$ then $x^2 + {v}x = {r}$; let me recompute the sum ${s}$ more carefully.",
    r"So the interval is $[{u}, {s})$ when $t \ge {v}$, and the remainder is ${r} \bmod {v}$.",
    r"Alternatively, $\binom{{{s}}}{{2}} = {p}$ pairs, minus ${q}$ overlaps.",
]


@dataclass
class Row:
    completion: str
    solution: str
    correct: bool  # the truth, by construction


def _reasoning(rng: random.Random, n_steps: int, tentative: str | None) -> str:
    steps = []
    for _ in range(n_steps):
        u, v = rng.randint(2, 99), rng.randint(2, 99)
        steps.append(rng.choice(_STEPS).format(u=u, v=v, s=u + v, p=u * v, q=u * v + 1, r=u * u - v,
                                              w=round((u * v + 1) ** 0.5, 3)))
    if tentative is not None:  # a number boxed while thinking: never the answer
        steps.insert(rng.randrange(len(steps)), rf"Maybe the answer is $\boxed{{{tentative}}}$? Let me verify.")
    return "\n\n".join(steps)


def make_rows(prompts: int, group: int, seed: int) -> list[Row]:
    """`prompts` × `group` R1-style completions with known correctness (problems cycle over PROBLEMS)."""
    rng = random.Random(seed)
    rows = []
    for i in range(prompts):
        gold, right, wrong = PROBLEMS[i % len(PROBLEMS)](rng)  # every prompt its own gold
        full_solution = rng.random() < 0.3  # the `solution` column holds a worked solution, not a bare answer
        solution = (rf"First we simplify. Then we compute carefully and get $\boxed{{{gold}}}$." if full_solution
                    else gold)
        for _ in range(group):
            kind = rng.random()
            think = _reasoning(rng, rng.randint(6, 14), rng.choice(wrong) if rng.random() < 0.25 else None)
            if kind < 0.45:
                answer, correct = rng.choice(right), True
                text = f"<think>\n{think}\n</think>\n\nTherefore, the final answer is $\\boxed{{{answer}}}$."
            elif kind < 0.82:
                answer, correct = rng.choice(wrong), False
                text = f"<think>\n{think}\n</think>\n\nSo the answer is $\\boxed{{{answer}}}$."
            elif kind < 0.90:  # no box: the final answer expression
                answer, correct = rng.choice(right), True
                text = f"<think>\n{think}\n</think>\n\nThe final answer is ${answer}$."
            elif kind < 0.95:  # cut off by the length limit, the right answer boxed while thinking
                text = f"<think>\n{think}\nSo far $\\boxed{{{rng.choice(right)}}}$ looks right, but"
                correct = False
            else:  # right while thinking, then a wrong final answer
                text = (f"<think>\n{think}\nIs it $\\boxed{{{rng.choice(right)}}}$? No.\n</think>\n\n"
                        f"The answer is $\\boxed{{{rng.choice(wrong)}}}$.")
                correct = False
            rows.append(Row(text, solution, correct))
    return rows


def plain_math_verify(rows: list[Row]) -> list[float]:
    """The reference: math-verify's documented use, one row at a time."""
    from math_verify import parse, verify

    return [float(verify(parse(r.solution), parse(r.completion))) for r in rows]


def trl_accuracy(rows: list[Row]) -> list[float | None]:
    """TRL's `accuracy_reward` (chat-list completions, as GRPOTrainer passes them)."""
    from trl.rewards import accuracy_reward

    return accuracy_reward([[{"role": "assistant", "content": r.completion}] for r in rows], [r.solution for r in rows])


def _accuracy(scores: list[float | None], rows: list[Row]) -> float:
    return sum((s == 1.0) == r.correct for s, r in zip(scores, rows, strict=True)) / len(rows)


def cpu_parallelism(loops: int = 3_000_000) -> float:
    """How many cores two busy processes actually got just now (2.0 on a quiet 2-core machine, ~1.0 when shared)."""
    import subprocess
    import sys

    code = f"s = 0\nfor i in range({loops}): s += i"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    one = time.perf_counter() - start
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    for proc in procs:
        proc.wait()
    return round(2 * one / (time.perf_counter() - start), 2)


def _cold_caches() -> None:
    """Forget parsed expressions in this process, so no method profits from the one measured before it."""
    from math_verify import parser

    from rewards.math import parse_gold

    for fn in (parser.parse_latex_cached, parser.parse_expr_cached, parse_gold):
        fn.cache_clear()


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run(quick: bool = False, prompts: int | None = None, group: int = 8, prompts_per_step: int = 16,
        workers: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Measure ours vs plain math-verify (and TRL) on the same rows; return the `benchmarks` result dict."""
    import logging

    from rewards.math import default_workers
    from rewards.registry import get_reward

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # timeouts are reported by each method itself
    prompts = prompts or (16 if quick else 64)
    rows = make_rows(prompts, group, seed)
    warmup = make_rows(max(2, prompts_per_step // 2), group, seed + 1000)
    step = prompts_per_step * group
    batches = [rows[i : i + step] for i in range(0, len(rows), step)]

    reward = get_reward("math", **({} if workers is None else {"workers": workers}))
    _, cold_s = _timed(reward, [r.completion for r in warmup], solution=[r.solution for r in warmup])
    plain_math_verify(warmup)  # imports and first-use costs, for the references too
    trl_accuracy(warmup)

    def by_step(fn: Any) -> list[float | None]:
        out: list[float | None] = []
        for batch in batches:
            out += fn([r.completion for r in batch], solution=[r.solution for r in batch])
        return out

    ours, ours_s = _timed(by_step, reward)
    ours_errors = reward.error_count
    reward.close()
    _cold_caches()
    in_process = get_reward("math", workers=0)
    ours_1, ours_1_s = _timed(by_step, in_process)
    _cold_caches()
    plain, plain_s = _timed(plain_math_verify, rows)
    _cold_caches()
    trl, trl_s = _timed(trl_accuracy, rows)

    parallelism = cpu_parallelism()
    n = len(rows)
    acc = {"ours": _accuracy(ours, rows), "ours_in_process": _accuracy(ours_1, rows), "plain": _accuracy(plain, rows),
           "trl": _accuracy(trl, rows)}
    agree = sum((a == 1.0) == (b == 1.0) for a, b in zip(ours, plain, strict=True)) / n
    rate = {"ours": n / ours_s, "ours_in_process": n / ours_1_s, "plain": n / plain_s, "trl": n / trl_s}
    cores = default_workers()
    return {
        "rows": [
            {"name": "math reward vs plain math-verify loop", "ours": round(rate["ours"], 1),
             "reference": round(rate["plain"], 1), "unit": "rows/s",
             "note": f"{prompts}x{group} R1-style rows, {step} per call, {reward.verifier.workers} workers on "
                     f"{cores} cores (2 busy processes got {parallelism} cores)"},
            {"name": "math reward accuracy vs plain math-verify", "ours": round(acc["ours"], 4),
             "reference": round(acc["plain"], 4), "unit": "fraction", "higher_is_better": True,
             "note": f"against the truth by construction; verdicts agree on {agree:.1%} of rows"},
            {"name": "math reward, in process (workers=0)", "ours": round(rate["ours_in_process"], 1),
             "reference": round(rate["plain"], 1), "unit": "rows/s",
             "note": f"vs the plain loop; accuracy {acc['ours_in_process']:.4f}"},
            {"name": "math reward vs TRL accuracy_reward", "ours": round(rate["ours"], 1),
             "reference": round(rate["trl"], 1), "unit": "rows/s",
             "note": f"TRL accuracy {acc['trl']:.4f}"},
        ],
        "params": {"prompts": prompts, "group": group, "rows": n, "rows_per_call": step,
                   "workers": reward.verifier.workers, "cores": cores, "seed": seed},
        "details": {"seconds": {"ours": round(ours_s, 3), "ours_in_process": round(ours_1_s, 3),
                                "plain": round(plain_s, 3), "trl": round(trl_s, 3),
                                "ours_warmup_with_worker_start": round(cold_s, 3)},
                    "accuracy": {k: round(v, 4) for k, v in acc.items()}, "agreement_with_plain": round(agree, 4),
                    "ours_errors": ours_errors, "cpu_parallelism": parallelism,
                    "truth_correct_share": round(sum(r.correct for r in rows) / n, 4)},
    }


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'':44} {'ours':>10} {'reference':>10} {'ratio':>7}  unit"]
    for row in result["rows"]:
        ratio = row["ours"] / row["reference"] if row.get("reference") else float("nan")
        lines.append(f"{row['name']:44} {row['ours']:>10} {row['reference']:>10} {ratio:>6.2f}x  {row['unit']}")
        lines.append(f"{'':44} {row['note']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 prompts instead of 64")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = parser.parse_args()
    result = run(quick=args.quick, prompts=args.prompts, workers=args.workers)
    print(_table(result))
    print(json.dumps(result["details"]))
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
