"""The seccomp filter of the sandbox: a classic-BPF program, assembled here, refusing a few syscalls.

bubblewrap loads it (`--seccomp FD`) into every sandbox. Namespaces already contain most of what these
syscalls could do; the filter takes away kernel attack surface (ptrace, bpf, io_uring, keyrings,
perf, module loading, taking another process's fds) and the IPC that would outlive one program in a
kept sandbox. Syscall numbers differ per architecture, so each has its own table; elsewhere the
sandbox runs without a filter.
"""

from __future__ import annotations

import platform
import struct

#: Refused with EPERM: kernel attack surface, and what could carry state from one program to the next.
DENIED_SYSCALLS = ("ptrace", "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key", "bpf",
                   "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
                   "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "mount",
                   "umount2", "pivot_root", "swapon", "swapoff", "reboot", "acct", "unshare", "setns", "syslog",
                   "quotactl", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
                   "name_to_handle_at", "open_by_handle_at", "pidfd_getfd",
                   # System V and POSIX message-queue IPC live in the IPC namespace, which outlives one program
                   # when a sandbox runs several in turn: refuse them rather than let them carry state across.
                   "shmget", "shmat", "shmctl", "semget", "semop", "semctl", "semtimedop", "msgget", "msgsnd",
                   "msgrcv", "msgctl", "mq_open", "mq_unlink")
#: machine: (AUDIT_ARCH, {name: syscall number}, the x32 bit or 0)
SYSCALLS: dict[str, tuple[int, dict[str, int], int]] = {
    "x86_64": (0xC000003E, {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "keyctl": 250, "add_key": 248,
        "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 246, "kexec_file_load": 320,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "mount": 165, "umount2": 166,
        "pivot_root": 155, "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "unshare": 272,
        "setns": 308, "syslog": 103, "quotactl": 179, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "name_to_handle_at": 303, "open_by_handle_at": 304,
        "pidfd_getfd": 438, "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66,
        "semtimedop": 220,
        "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241,
    }, 0x40000000),
    "aarch64": (0xC00000B7, {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "keyctl": 219, "add_key": 217,
        "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 104, "kexec_file_load": 294,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "mount": 40, "umount2": 39,
        "pivot_root": 41, "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89, "unshare": 97,
        "setns": 268, "syslog": 116, "quotactl": 60, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "name_to_handle_at": 264, "open_by_handle_at": 265,
        "pidfd_getfd": 438, "shmget": 194, "shmat": 196, "shmctl": 195, "semget": 190, "semop": 193,
        "semctl": 191, "semtimedop": 192,
        "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "mq_open": 180, "mq_unlink": 181,
    }, 0),
}


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp program (bubblewrap's `--seccomp` format) refusing DENIED_SYSCALLS with EPERM.

    Other architectures' syscalls (e.g. 32-bit ones on x86_64) kill the process; so do x32 calls.
    None on a machine without a table here (the sandbox then runs without a filter).
    """
    machine = machine or platform.machine()
    if machine not in SYSCALLS:
        return None
    arch, numbers, x32 = SYSCALLS[machine]
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill, eperm = 0x7FFF0000, 0x80000000, 0x00050000 | 1
    denied = sorted({numbers[name] for name in DENIED_SYSCALLS})
    checks = [(jge, "kill", x32)] if x32 else []
    checks += [(jeq, "eperm", nr) for nr in denied]
    prog: list[tuple[int, int, int, int]] = [(ld_abs, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill),
                                             (ld_abs, 0, 0, 0)]
    end = len(prog) + len(checks)  # index of "allow"; "eperm" and "kill" follow it
    target = {"eperm": end + 1, "kill": end + 2}
    for code, where, k in checks:
        prog.append((code, target[where] - len(prog) - 1, 0, k))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm), (ret, 0, 0, kill)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)
