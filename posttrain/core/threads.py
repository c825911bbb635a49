"""How torch's CPU threads wait for work: OpenMP's passive wait policy for every `posttrain` command.

torch runs its CPU ops on an OpenMP pool (one thread per core by default). With OpenMP's default policy a thread
that finished its share spins for a while before it sleeps; on a machine whose cores are shared (other jobs, or
the processes of one run) the spinning threads take the cores the working ones wait for, and a two-thread GRPO
step took 16 times as long as with the threads sleeping at once (`benchmarks/thread_layout.py`, docs/results.md).
`OMP_WAIT_POLICY=PASSIVE` makes them sleep at once. OpenMP reads it when it starts, that is when torch is first
imported: the command line sets it before anything imports torch, and child processes (accelerate's workers,
the rollout server) inherit it. A value the user set is kept.
"""

from __future__ import annotations

import os
import sys

#: The environment variable and the value `posttrain` sets unless the user did.
WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")


def passive_wait() -> bool:
    """Set OpenMP's passive wait policy for this process and its children, unless the user chose a policy or
    torch (and so OpenMP) already started; True when it took effect here."""
    name, value = WAIT_POLICY
    if name in os.environ or "torch" in sys.modules:
        return False
    os.environ[name] = value
    return True
