"""How torch's CPU threads wait for work: OpenMP's passive wait policy when the machine's cores are already busy.

torch runs its CPU ops on an OpenMP pool (one thread per core by default). With OpenMP's default policy a thread
that finished its share spins for a while before it sleeps. On cores of its own that is the fast choice: the tiny
recipe's GRPO step took 0.9 s with spinning threads and 1.4 s with sleeping ones on an idle 2-core machine (30
steps each, twice, docs/results.md). On cores shared with other work the spinning threads take the cores the
working ones wait for, and a two-thread GRPO step took 16 times as long (`benchmarks/thread_layout.py` under a
load average of 10). So a `posttrain` command that computes (all but `validate` and `report`) sets
`OMP_WAIT_POLICY=PASSIVE` (threads sleep at once) when other work keeps at least three quarters of a core busy as
it starts (watched for 0.2 s), and leaves OpenMP's default otherwise; the test session, whose workers share the
cores by design, always sets it. OpenMP reads the variable when it starts, that is when torch is first imported:
the command line decides before anything imports torch, and child processes (accelerate's workers, the rollout
server) inherit it. A value the user set is kept.
"""

from __future__ import annotations

import os
import sys
import time

#: The environment variable and the value `posttrain` sets unless the user did.
WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")


#: Other work (busy cores) from which threads sleep at once rather than spin.
BUSY_CORES = 0.75
#: How long the machine is watched before the command starts (seconds).
WATCH_S = 0.2


def busy_cores(seconds: float = WATCH_S) -> float | None:
    """Cores' worth of work the machine did over the next `seconds` (/proc/stat), or None where it cannot say.

    Measured now rather than read from the load average, which still counts for a minute a job that has just
    ended (the previous stage of a script, say)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(total1 - total0, 1)


def wait_for_machine(busy: float | None = None) -> bool:
    """`passive_wait()` when other work keeps at least `BUSY_CORES` busy (`busy`: measured when None); True when
    the passive policy was set here. Nothing is measured when the choice is no longer ours."""
    if _decided():
        return False
    if busy is None:
        busy = busy_cores()
    return busy is not None and busy >= BUSY_CORES and passive_wait()


def passive_wait() -> bool:
    """Set OpenMP's passive wait policy for this process and its children, unless the choice is no longer ours;
    True when it took effect here."""
    if _decided():
        return False
    name, value = WAIT_POLICY
    os.environ[name] = value
    return True


def _decided() -> bool:
    """The user chose a policy, or torch (and so OpenMP) already started and read it."""
    return WAIT_POLICY[0] in os.environ or "torch" in sys.modules
