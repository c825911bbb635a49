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
  counts), inside `<answer>…</answer>` when the completion has the tags (R1-Zero's prompt), there the
  last `\\boxed{}` wins (all of them for a multi-part gold), else a short answer read as LaTeX, else
  math-verify's final-answer extraction on the answer text. Words, number words and multiple-choice
  letters never reach math-verify (which would read "no" as n*o): see `rewards.math_answers`. An
  inequality and an interval are compared both ways.
- An answer part that nothing can read (tags around prose, an empty box, a sentence without a number)
  scores 0.0 *with an error*, so a prompt that asks for a layout this reward does not read shows up at
  once in the error counts; a readable wrong answer is a plain 0.0, and so is an empty answer part.
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
from multiprocessing.connection import Connection, wait
from typing import Any

from posttrain.core.errors import DataError, PluginError
from rewards.math_answers import (
    UNREADABLE,
    Task,
    answer_part,
    compared_expression,
    gold_answer,
    has_inequality,
    predicted_answer,
    prepare,
    quick_verdict,
    short_answer,
    unreadable,
)
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


# ---------------------------------------------------------------- verifying with math-verify (sympy)


class GoldError(ValueError):
    """The gold answer cannot be parsed: the row has no score (None), and an error says why."""


class Unreadable(ValueError):
    """Nothing in the answer could be parsed: the row scores 0.0 (the answer's doing) and the error says why."""


@functools.lru_cache(maxsize=4096)
def parse_gold(gold: str) -> list[Any]:
    """math-verify's reading of a gold answer, cached: G completions share one gold."""
    from math_verify import parse

    boxed = re.sub(r"(?<!\\)%", r"\\%", gold)
    parsed = parse("\\boxed{" + boxed + "}", parsing_timeout=None)  # type: ignore[arg-type]
    return parsed or parse(gold, parsing_timeout=None)  # type: ignore[arg-type]


def verify_answer(gold: str, pred: str, mode: str | bool) -> float:
    """1.0 if math-verify finds `pred` equal to `gold`, else 0.0; no time bound of its own (see `bounded`).

    `mode` (see `rewards.math_answers.Task`): "boxed" reads `pred` as LaTeX, "short" reads the short final
    expression of the text `pred` as LaTeX and, if that finds nothing, the whole text with the final-answer
    extraction, "text" the text with the extraction only (True and False mean "boxed" and "text"). An
    answer in which nothing can be read raises `Unreadable`. An inequality is also compared the other way
    round, as math-verify matches `x > 2` against `(2, \\infty)` only when `x > 2` is the gold.
    """
    from math_verify import parse, verify

    mode = {True: "boxed", False: "text"}.get(mode, mode)  # type: ignore[call-overload]
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        raise GoldError(f"gold answer {gold[:200]!r} cannot be parsed by math-verify")
    expression = pred if mode == "boxed" else short_answer(pred) if mode == "short" else None
    pred_parsed = []
    if expression:
        pred_parsed = parse("\\boxed{" + expression + "}", parsing_timeout=None)  # type: ignore[arg-type]
    if not pred_parsed and mode in ("short", "text"):
        pred_parsed = parse(pred, parsing_timeout=None)  # type: ignore[arg-type]
    if not pred_parsed:
        raise Unreadable(unreadable(pred))
    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return 1.0
    if has_inequality(gold) or has_inequality(expression or pred):
        return 1.0 if verify(pred_parsed, gold_parsed, timeout_seconds=None) else 0.0
    return 0.0


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


def bounded(gold: str, pred: str, mode: str | bool, timeout_s: float) -> tuple[float | None, str | None]:
    """(score, error) of one row, cut off after `timeout_s` by SIGALRM. Main thread of a process only.

    A timeout, memory exhaustion or an answer with nothing to read is the answer's doing: 0.0 with an
    error. A gold that cannot be parsed, or a bug, gives no score (None) and an error.
    """
    try:
        with _alarm(timeout_s):
            return verify_answer(gold, pred, mode), None
    except Unreadable as exc:
        return 0.0, str(exc)
    except RowTimeout:
        return 0.0, f"math verification timed out after {timeout_s:g} s (answer {pred[:100]!r})"
    except MemoryError:
        return 0.0, f"math verification ran out of memory (answer {pred[:100]!r})"
    except GoldError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"math verification failed: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- worker processes with a hard deadline

_WORKER_BOOT = "import sys, json; sys.path[:] = json.loads(sys.argv[1]); import rewards.math as m; m.worker_main()"


def worker_main() -> None:
    """Entry of a worker process (argv: sys.path as JSON, socket fd, timeout_s, memory_mb).

    Receives chunks of (index, gold, pred, mode) and sends back one (index, score, error) per row.
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
        for index, gold, pred, mode in chunk:
            score, error = bounded(gold, pred, mode, timeout_s)
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
    """Math correctness: 1.0 if the final answer (after </think>, in <answer> tags, last \\boxed{}) equals `solution`.

    `solution` is a bare answer or a full solution whose last `\\boxed{}` holds it. Equivalence is
    math-verify's (fractions, decimals, percent, units, `\\text{}`, intervals, sets, tuples, matrices,
    symbolic). A row past `timeout_s`, or whose answer part holds nothing readable, scores 0.0 with an
    error; a gold that cannot be parsed scores None with an error. `workers` processes verify in
    parallel (default: the cores); `workers=0` or 1 verifies in this process (bounded by SIGALRM in the
    main thread; from another thread one helper process bounds it, as a thread cannot be interrupted).

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
        #: Verdicts already reached, by task: G completions often give the same answer.
        self._verdicts: dict[Task, Scored] = {}

    def row_key(self, completion: Any, solution: Any = None, prompts: Any = None, **row: Any) -> Hashable | None:
        """Rows with the same gold and the same answer get the same verdict, whatever the reasoning around it."""
        gold = gold_answer(solution)
        if not gold:
            return None
        answer = answer_part(completion, prompts)
        return gold, (None if answer is None else prepare(gold, answer))

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
            answer = answer_part(completion, prompts[i] if prompts is not None and len(prompts) == n else None)
            if answer is None or not answer.strip():
                continue  # no answer: wrong, not a failure
            task = prepare(gold, answer)
            if not isinstance(task, tuple) or isinstance(task, Scored):  # decided without sympy
                out[i] = task if isinstance(task, Scored) else Scored(task)
                continue
            verdict = self._verdicts.get(task)
            if verdict is None and (expression := compared_expression(task)) is not None:
                quick = quick_verdict(gold, expression)
                verdict = None if quick is None else Scored(quick)
            if verdict is not None:
                out[i] = verdict
            else:
                pending.append((task, i))
        for (task, i), (score, error) in zip(pending, self._verify([t for t, _ in pending]), strict=True):
            out[i] = Scored(score, error)
            if score is not None and (error is None or error.startswith(UNREADABLE)):  # a verdict, not a timeout
                if len(self._verdicts) >= _MAX_VERDICTS:
                    self._verdicts.clear()
                self._verdicts[task] = out[i]
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


__all__ = ["MathReward", "VerifierPool", "gold_answer", "predicted_answer", "prepare", "quick_verdict"]
