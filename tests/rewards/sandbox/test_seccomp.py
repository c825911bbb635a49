"""The seccomp filter's assembler (its effect inside a sandbox is in test_security.test_no_privileges_inside)."""

from __future__ import annotations

import platform
import struct

import pytest

from rewards.sandbox import seccomp_filter
from rewards.sandbox.seccomp import DENIED_SYSCALLS, SYSCALLS


def test_seccomp_filter_is_well_formed() -> None:
    program = seccomp_filter("x86_64")
    assert program is not None and len(program) % 8 == 0
    instructions = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    assert instructions[-3:] == [(6, 0, 0, 0x7FFF0000), (6, 0, 0, 0x00050001), (6, 0, 0, 0x80000000)]
    denied = {k for code, jt, _, k in instructions if code == 0x15 and jt}
    assert {101, 321, 272} <= denied  # ptrace, bpf, unshare
    for i, (code, jt, jf, _) in enumerate(instructions):  # every jump lands on a return
        if code in (0x15, 0x35) and i > 1:
            assert instructions[i + 1 + jt][0] == 6 and jf == 0
    assert seccomp_filter("sparc") is None


ALLOW, EPERM, KILL = 0x7FFF0000, 0x00050001, 0x80000000


def evaluate(program: bytes, arch: int, nr: int) -> int:
    """What the kernel would return for syscall `nr` on `arch`: a tiny interpreter of the opcodes we emit."""
    instructions = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    data = {0: nr, 4: arch}  # struct seccomp_data: nr at offset 0, arch at 4
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = instructions[pc]
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            acc = data[k]
        elif code in (0x15, 0x35):  # BPF_JMP | BPF_JEQ / BPF_JGE, with a constant
            taken = acc == k if code == 0x15 else acc >= k
            pc += jt if taken else jf
        elif code == 0x06:  # BPF_RET
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1


@pytest.mark.parametrize("machine", sorted(SYSCALLS))
def test_the_filter_refuses_exactly_the_denied_syscalls(machine: str) -> None:
    arch, numbers, x32 = SYSCALLS[machine]
    program = seccomp_filter(machine)
    assert program is not None
    denied = {numbers[name] for name in DENIED_SYSCALLS}
    for nr in range(0, 512):
        assert evaluate(program, arch, nr) == (EPERM if nr in denied else ALLOW), nr
    assert evaluate(program, 0x40000003, numbers["ptrace"]) == KILL  # another architecture (i386)
    if x32:
        assert evaluate(program, arch, x32 | 0) == KILL  # x32 calls on x86_64


@pytest.mark.parametrize("machine", sorted(SYSCALLS))
def test_every_denied_syscall_has_a_distinct_number(machine: str) -> None:
    _, numbers, _ = SYSCALLS[machine]
    assert set(DENIED_SYSCALLS) == set(numbers)
    assert len(set(numbers.values())) == len(numbers)


def test_this_machine_has_a_filter() -> None:
    assert platform.machine() not in SYSCALLS or seccomp_filter() == seccomp_filter(platform.machine())
