"""Math answer correctness: the final answer after `</think>` against column `solution`, via math-verify.

Why this is more than `verify(parse(gold), parse(completion))`:
- math-verify bounds its time with `signal.alarm`, which only works in the main thread, and turns a
  timeout into a silent False. Here its own timeouts are off and the bound is ours: worker processes
  that are killed and replaced when a row runs past its deadline (or SIGALRM when scoring in the
  main thread). A row cut off scores 0.0 *with an error*, so it is counted, never a silent 0.
- GRPO scores G completions per gold answer, and they often give the same answer in different words:
  rows are deduplicated by (gold, answer) (`MathReward.row_key`), exact and plain-number matches
  are decided without sympy, verdicts already reached are remembered, and only the rest is spread
  over the processes.
- The answer is read where it is: after `</think>` (a boxed number inside the reasoning never
  counts), the last `\\boxed{}` wins, else math-verify's final-answer extraction on the answer text.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from typing import Any

from posttrain.core.errors import DataError, PluginError
from rewards.answer import THINK_OPEN, completion_text, last_boxed, split_think
from rewards.protocol import Scored, Verifier, default_workers

log = logging.getLogger("posttrain.rewards.math")


class _TimeoutWarningFilter(logging.Filter):
    """math-verify warns once that its timeouts are off; we turn them off on purpose and bound time ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_TimeoutWarningFilter())


class RowTimeout(BaseException):
    """A row ran past its bound. A BaseException so that math-verify's and sympy's `except Exception` let it through."""


# ---------------------------------------------------------------- reading answers (cheap, no sympy)


def gold_answer(solution: Any) -> str:
    """The gold answer in a `solution` cell: the last `\\boxed{}` of a full solution, else the cell itself.

    >>> gold_answer(r"So $x=2$ and the sum is \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    text = "" if solution is None else str(solution)
    boxed = last_boxed(text)
    text = (boxed if boxed is not None else text).strip()
    if len(text) >= 2 and text[0] == text[-1] == "$" and "$" not in text[1:-1]:
        text = text[1:-1].strip()
    return text


def predicted_answer(completion: Any, prompt: Any = None) -> tuple[str, bool] | None:
    """(answer, is_boxed) of a completion, or None when it has no answer part (cut off inside `<think>`).

    The answer part is what follows `</think>`; in it the last `\\boxed{}` wins, else the whole answer
    text goes to math-verify's final-answer extraction. A prompt that ends with `<think>` (R1's chat
    template) means the completion is all reasoning until it closes the tag.

    >>> predicted_answer(r"<think>maybe \\boxed{3}</think> It is \\boxed{4}, not \\boxed{5}? No: \\boxed{4}.")
    ('4', True)
    """
    text = completion_text(completion)
    reasoning, answer = split_think(text)
    if reasoning is None and (THINK_OPEN in text or (isinstance(prompt, str) and prompt.rstrip().endswith(THINK_OPEN))):
        return None
    boxed = last_boxed(answer)
    if boxed is not None:
        return boxed, True
    return answer, False


_COSMETIC = re.compile(r"\\left|\\right|\\displaystyle|\\[!,;: ]|\s+")
_INT = re.compile(r"[+-]?\d+")
_DEC = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_SLASH = re.compile(r"([+-]?\d+)/(\d+)")
_FRAC = re.compile(r"([+-]?)\\frac(?:\{([+-]?\d+)\}|(\d))(?:\{(\d+)\}|(\d))")


def normalize(text: str) -> str:
    """Cosmetic normal form for exact matching: no spaces, `\\left`/`\\right`, spacing commands, outer `$`."""
    s = text.strip().strip("$")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\u2212", "-")
    s = _COSMETIC.sub("", s)
    return s.rstrip(".")


def as_number(text: str) -> tuple[Fraction, bool] | None:
    """(value, written_as_decimal) of a plain number: `12`, `-0.5`, `3/4`, `\\frac{3}{4}`, `\\frac34`; else None."""
    try:
        if _INT.fullmatch(text):
            return Fraction(int(text)), False
        if _DEC.fullmatch(text):
            return Fraction(text), True
        if m := _SLASH.fullmatch(text):
            return (Fraction(int(m[1]), int(m[2])), False) if int(m[2]) else None
        if m := _FRAC.fullmatch(text):
            num, den = int(m[2] or m[3]), int(m[4] or m[5])
            return (Fraction(-num if m[1] == "-" else num, den), False) if den else None
    except ValueError:  # e.g. an integer past Python's digit limit
        return None
    return None


def as_sequence(text: str) -> tuple[str, list[tuple[Fraction, bool]]] | None:
    """(brackets, numbers) of a tuple, interval or set of plain numbers: `(1,-2)`, `[2,5)`, `\\{1,3\\}`; else None."""
    if text.startswith("\\{") and text.endswith("\\}"):
        brackets, inner = "{}", text[2:-2]
    elif len(text) > 2 and text[0] in "([" and text[-1] in ")]":
        brackets, inner = text[0] + text[-1], text[1:-1]
    else:
        return None
    parts = inner.split(",")
    numbers = [as_number(part) for part in parts]
    if (len(parts) < 2 and brackets != "{}") or any(n is None for n in numbers):
        return None
    return brackets, numbers  # type: ignore[return-value]


def _numbers_verdict(g: tuple[Fraction, bool], p: tuple[Fraction, bool]) -> float | None:
    (gv, g_dec), (pv, p_dec) = g, p
    if gv == pv:
        return 1.0
    if not (g_dec or p_dec):
        return 0.0
    if abs(gv - pv) > Fraction(1, 10**5) * max(1, abs(gv), abs(pv)):
        return 0.0
    return None  # within math-verify's rounding of decimals: its call


def quick_verdict(gold: str, pred: str) -> float | None:
    """1.0/0.0 when the answer is decided without sympy (same verdict as math-verify's), else None.

    Equal normal forms are equal. Two plain numbers are compared exactly; when one is written as a
    decimal, math-verify rounds to 6 places, so only a difference far above that decides 0.0 here.
    Tuples, intervals and sets of plain numbers with the same brackets are compared element by
    element (sets as sets); anything else (units, percent, symbols, mixed brackets) is left to sympy.

    >>> quick_verdict("440", "440"), quick_verdict(r"\\frac{1}{2}", "1/2"), quick_verdict("7", "8")
    (1.0, 1.0, 0.0)
    >>> quick_verdict("[2, 5)", "[2,5]"), quick_verdict(r"\\{1, 3\\}", r"\\{3,1\\}"), quick_verdict("(1,2)", "(1,3)")
    (None, 1.0, 0.0)
    """
    g, p = normalize(gold), normalize(pred)
    if g and g == p:
        return 1.0
    gn, pn = as_number(g), as_number(p)
    if gn is not None and pn is not None:
        return _numbers_verdict(gn, pn)
    gs, ps = as_sequence(g), as_sequence(p)
    if gs is None or ps is None or gs[0] != ps[0]:
        return None
    (brackets, gnums), (_, pnums) = gs, ps
    if brackets == "{}":
        if any(d for _, d in gnums + pnums):
            return None
        return float({v for v, _ in gnums} == {v for v, _ in pnums})
    if len(gnums) != len(pnums):
        return 0.0
    verdicts = [_numbers_verdict(a, b) for a, b in zip(gnums, pnums, strict=True)]
    if 0.0 in verdicts:
        return 0.0
    return 1.0 if all(v == 1.0 for v in verdicts) else None


# ---------------------------------------------------------------- verifying with math-verify (sympy)


class GoldError(ValueError):
    """The gold answer cannot be parsed: the row has no score (None), and an error says why."""


@functools.lru_cache(maxsize=4096)
def parse_gold(gold: str) -> list[Any]:
    """math-verify's reading of a gold answer, cached: G completions share one gold."""
    from math_verify import parse

    boxed = re.sub(r"(?<!\\)%", r"\\%", gold)
    parsed = parse("\\boxed{" + boxed + "}", parsing_timeout=None)  # type: ignore[arg-type]
    return parsed or parse(gold, parsing_timeout=None)  # type: ignore[arg-type]


def verify_answer(gold: str, pred: str, boxed: bool) -> float:
    """1.0 if math-verify finds `pred` equal to `gold`, else 0.0; no time bound of its own (see `bounded`)."""
    from math_verify import parse, verify

    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        raise GoldError(f"gold answer {gold[:200]!r} cannot be parsed by math-verify")
    pred_parsed = parse("\\boxed{" + pred + "}" if boxed else pred, parsing_timeout=None)  # type: ignore[arg-type]
    return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=None) else 0.0


def _raise_timeout(signum: int, frame: Any) -> None:
    raise RowTimeout


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise RowTimeout after `seconds` (main thread only: it uses SIGALRM)."""
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def bounded(gold: str, pred: str, boxed: bool, timeout_s: float) -> tuple[float | None, str | None]:
    """(score, error) of one row, cut off after `timeout_s` by SIGALRM. Main thread of a process only.

    A timeout or memory exhaustion is the answer's doing: 0.0 with an error. A gold that cannot be
    parsed, or a bug, gives no score (None) and an error.
    """
    try:
        with _alarm(timeout_s):
            return verify_answer(gold, pred, boxed), None
    except RowTimeout:
        return 0.0, f"math verification timed out after {timeout_s:g} s (answer {pred[:100]!r})"
    except MemoryError:
        return 0.0, f"math verification ran out of memory (answer {pred[:100]!r})"
    except GoldError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"math verification failed: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- worker processes with a hard deadline

Task = tuple[str, str, bool]  # gold, predicted answer, is_boxed

_WORKER_BOOT = "import sys, json; sys.path[:] = json.loads(sys.argv[1]); import rewards.math as m; m.worker_main()"


def worker_main() -> None:
    """Entry of a worker process (argv: sys.path as JSON, socket fd, timeout_s, memory_mb).

    Receives chunks of (index, gold, pred, boxed) and sends back one (index, score, error) per row.
    It exits when the parent closes the socket or goes away.
    """
    fd, timeout_s, memory_mb = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_mb > 0:
        import resource

        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    parent = os.getppid()

    def orphan_watch() -> None:  # a worker stuck in sympy must not outlive its parent
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphan_watch, daemon=True).start()
    import math_verify  # noqa: F401  (imported before "ready": a row's time bound is for the row only)

    conn = Connection(fd)
    conn.send(("ready",))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for index, gold, pred, boxed in chunk:
            score, error = bounded(gold, pred, boxed, timeout_s)
            conn.send((index, score, error))


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    chunk: deque = field(default_factory=deque)
    deadline: float = 0.0


class VerifierPool:
    """Worker processes that run `bounded` on rows; one past its hard deadline is killed and replaced.

    Each worker bounds a row softly with SIGALRM after `soft_s`; the parent kills a worker that has
    not answered a row within `hard_s` (a computation stuck in C ignores signals), scores that row 0.0
    with an error, and hands the rest of its chunk to a fresh worker. Workers are plain `python -c` processes
    talking over a socket pair: nothing of the caller's `__main__` is re-imported, no `fork` of a
    process that holds threads. One batch at a time (callers hold a lock).
    """

    def __init__(self, size: int, soft_s: float, hard_s: float, memory_mb: int | None = None,
                 startup_s: float = 300.0):
        self.size = max(1, size)
        self.soft_s = soft_s
        self.hard_s = hard_s
        self.memory_mb = memory_mb or 0
        self.startup_s = startup_s
        self.restarts = 0
        self.owner = os.getpid()
        self._workers: list[_Worker] = []

    def _start(self) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_BOOT, json.dumps(sys.path), str(theirs.fileno()),
                 repr(self.soft_s), str(self.memory_mb)],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        return _Worker(process, Connection(ours.detach()))

    def _stop(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(5)
        worker.conn.close()

    def _replace(self, worker: _Worker) -> None:
        self._stop(worker)
        self.restarts += 1
        self._workers[self._workers.index(worker)] = self._start()

    def map(self, tasks: Sequence[Task]) -> list[tuple[float | None, str | None]]:
        """(score, error) per task, in order."""
        n = len(tasks)
        results: list[tuple[float | None, str | None] | None] = [None] * n
        while len(self._workers) < self.size:
            self._workers.append(self._start())
        # Rows with the same gold go to the same worker, which parses that gold once.
        order = sorted(range(n), key=lambda i: tasks[i][0])
        size = max(1, min(16, -(-n // (4 * self.size))))
        queue: deque[list[int]] = deque(order[i : i + size] for i in range(0, n, size))
        hard = self.hard_s
        done = 0
        while done < n:
            now = time.monotonic()
            for w in self._workers:
                # Up to two chunks in flight: a worker never idles waiting for this process to wake up.
                while w.ready and queue and len(w.chunk) <= size:
                    rows = queue.popleft()
                    if not w.chunk:
                        w.deadline = now + hard
                    w.chunk.extend(rows)
                    w.conn.send([(i, *tasks[i]) for i in rows])
            watched = [w for w in self._workers if w.chunk or not w.ready]
            deadlines = [w.deadline if w.ready else w.started + self.startup_s for w in watched]
            ready = wait([w.conn for w in watched], timeout=max(0.0, min(deadlines) - now))
            for w in watched:
                if w.conn in ready:
                    done += self._receive(w, results, queue)
                elif not w.ready and time.monotonic() >= w.started + self.startup_s:
                    self.close()
                    raise RuntimeError(f"math-verify worker did not start in {self.startup_s:g} s")
                elif w.ready and time.monotonic() >= w.deadline:
                    done += self._fail(w, results, queue, f"math verification did not finish in {hard:g} s: "
                                                          "worker killed")
        return [r if r is not None else (None, "internal error: row lost") for r in results]

    def _receive(self, w: _Worker, results: list, queue: deque[list[int]]) -> int:
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            code = w.process.poll()
            if not w.chunk:  # died before its first row (e.g. cannot import): start again, once per failure
                self._replace(w)
                if self.restarts > 10 * self.size:
                    self.close()
                    raise RuntimeError(f"math-verify workers keep dying at start (exit code {code})") from None
                return 0
            return self._fail(w, results, queue, f"math-verify worker died (exit code {code})")
        if message == ("ready",):
            w.ready = True
            return 0
        index, score, error = message
        results[index] = (score, error)
        w.chunk.remove(index)
        w.deadline = time.monotonic() + self.hard_s
        return 1

    def _fail(self, worker: _Worker, results: list, queue: deque[list[int]], why: str) -> int:
        """Score the worker's current row 0.0 with `why`, requeue the rows it still had, replace the worker."""
        index = worker.chunk.popleft()
        results[index] = (0.0, why)
        if worker.chunk:
            queue.appendleft(list(worker.chunk))
        self._replace(worker)
        return 1

    def close(self) -> None:
        """Stop the workers (they also stop when this process ends)."""
        if self.owner != os.getpid():
            self._workers = []  # a forked copy: the workers are the parent's to stop
            return
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in self._workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.process.wait(1)
            self._stop(w)
        self._workers = []

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# ---------------------------------------------------------------- the reward

_MAX_VERDICTS = 100_000


class MathReward(Verifier):
    """Math correctness: 1.0 if the final answer (after </think>, last \\boxed{}) equals column `solution`, else 0.0.

    `solution` is a bare answer or a full solution whose last `\\boxed{}` holds it. Equivalence is
    math-verify's (fractions, decimals, percent, units, `\\text{}`, intervals, sets, tuples, matrices,
    symbolic). A row past `timeout_s` scores 0.0 with an error; a gold that cannot be parsed scores
    None with an error. `workers` processes verify in parallel (default: the cores); `workers=0` or 1
    verifies in this process (bounded by SIGALRM in the main thread; from another thread one helper
    process bounds it, as a thread cannot be interrupted).

    >>> reward = MathReward(workers=0)
    >>> reward([r"<think>2/4 = \\boxed{0.4}?</think> So \\boxed{\\frac{1}{2}}.", "<think>hmm</think> 0.6"],
    ...        solution=["0.5", r"The answer is $\\boxed{0.5}$."])
    [1.0, 0.0]
    """

    transient = (("_pool", None), ("_lock", threading.Lock), ("_verdicts", dict))

    def __init__(self, workers: int | None = None, timeout_s: float = 5.0, memory_mb: int | None = 4096):
        if timeout_s <= 0:
            raise PluginError(f"math reward: timeout_s must be > 0, got {timeout_s}")
        self.workers = default_workers() if workers is None else int(workers)
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self._pool: VerifierPool | None = None
        self._lock = threading.Lock()
        #: Verdicts already reached, by (gold, answer, boxed): G completions often give the same answer.
        self._verdicts: dict[Task, float] = {}

    def row_key(self, completion: Any, solution: Any = None, prompts: Any = None, **row: Any) -> Hashable | None:
        """Rows with the same gold and the same answer get the same verdict, whatever the reasoning around it."""
        gold = gold_answer(solution)
        return (gold, predicted_answer(completion, prompts)) if gold else None

    def score_rows(self, completions: Sequence[Any], solution: Sequence[Any] | None = None,
                   prompts: Sequence[Any] | None = None, **kwargs: Any) -> list[Scored]:
        n = len(completions)
        if solution is None:
            raise DataError("the math reward needs a `solution` column (the gold answer, or a solution "
                            "whose last \\boxed{} holds it)")
        if len(solution) != n:
            raise DataError(f"math reward: {len(solution)} solutions for {n} completions")
        out = [Scored(0.0)] * n
        pending: list[tuple[Task, int]] = []
        for i, (completion, sol) in enumerate(zip(completions, solution, strict=True)):
            gold = gold_answer(sol)
            if not gold:
                out[i] = Scored(None, f"empty gold answer in column `solution`: {sol!r}")
                continue
            prompt = prompts[i] if prompts is not None and len(prompts) == n else None
            found = predicted_answer(completion, prompt)
            if found is None or not found[0].strip():
                continue  # no answer: wrong, not a failure
            pred, boxed = found
            task = (gold, pred, boxed)
            verdict = self._verdicts.get(task)
            if verdict is None and (boxed or len(pred) < 64):
                verdict = quick_verdict(gold, pred)
            if verdict is not None:
                out[i] = Scored(verdict)
            else:
                pending.append((task, i))
        for (task, i), (score, error) in zip(pending, self._verify([t for t, _ in pending]), strict=True):
            out[i] = Scored(score, error)
            if error is None and score is not None:
                if len(self._verdicts) >= _MAX_VERDICTS:
                    self._verdicts.clear()
                self._verdicts[task] = score
        return out

    def _verify(self, tasks: list[Task]) -> list[tuple[float | None, str | None]]:
        if not tasks:
            return []
        in_main = threading.current_thread() is threading.main_thread()
        if self.workers <= 1 and in_main:
            return [bounded(*task, timeout_s=self.timeout_s) for task in tasks]
        with self._lock:
            if self._pool is not None and self._pool.owner != os.getpid():
                self._pool = None  # inherited through fork: those workers talk to the parent, start our own
            if self._pool is None:
                self._pool = VerifierPool(max(1, self.workers), self.timeout_s, self.timeout_s + 2.0, self.memory_mb)
            return self._pool.map(tasks)

    def close(self) -> None:
        """Stop the worker processes now (they also stop when this process ends)."""
        super().close()
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __repr__(self) -> str:
        return f"MathReward(workers={self.workers}, timeout_s={self.timeout_s:g})"


__all__ = ["MathReward", "VerifierPool", "gold_answer", "predicted_answer", "quick_verdict"]
