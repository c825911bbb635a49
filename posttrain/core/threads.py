"""How torch's CPU threads wait for work: OpenMP's passive wait policy when the machine's cores are already busy.

torch runs its CPU ops on an OpenMP pool (one thread per core by default). With OpenMP's default policy a thread
that finished its share spins for a while before it sleeps. On cores of its own that is the fast choice: the tiny
recipe's GRPO step took 0.9 s with spinning threads and 1.4 s with sleeping ones on an idle 2-core machine (30
steps each, twice, docs/results.md). On cores shared with other work the spinning threads take the cores the
working ones wait for, and a two-thread GRPO step took 16 times as long (`benchmarks/thread_layout.py` under a
load average of 10). So a `posttrain` command sets `OMP_WAIT_POLICY=PASSIVE` (threads sleep at once) when the
1-minute load average before it starts says at least one core's worth of other work is running, and leaves
OpenMP's default otherwise; the test session, whose workers share the cores by design, always sets it. OpenMP
reads the variable when it starts, that is when torch is first imported: the command line decides before anything
imports torch, and child processes (accelerate's workers, the rollout server) inherit it. A value the user set is
kept.
"""

from __future__ import annotations

import os
import sys

#: The environment variable and the value `posttrain` sets unless the user did.
WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")


#: Other work (1-minute load average, in cores) from which threads sleep at once rather than spin.
BUSY_LOAD = 1.0


def wait_for_machine(load: float | None = None) -> bool:
    """`passive_wait()` when the machine is busy (`load`: the 1-minute load average, read when None); True when
    the passive policy was set here."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform: assume the cores are ours
            return False
    return load >= BUSY_LOAD and passive_wait()


def passive_wait() -> bool:
    """Set OpenMP's passive wait policy for this process and its children, unless the user chose a policy or
    torch (and so OpenMP) already started; True when it took effect here."""
    name, value = WAIT_POLICY
    if name in os.environ or "torch" in sys.modules:
        return False
    os.environ[name] = value
    return True
