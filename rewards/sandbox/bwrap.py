"""The bubblewrap command line of a sandbox, what this bubblewrap supports, and the interpreter inside.

What bubblewrap alone does not give, and this command line adds (docs/rewards.md, code tests and the sandbox):
bubblewrap starts with an empty environment (its helper is PID 1 inside, and its environ is
readable), all capabilities are dropped (bubblewrap run as root keeps them), the program runs as
uid 1000 in a user namespace, and only the system's `/usr` and a few `/etc` files are visible.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rewards.sandbox.supervisor as supervisor  # the module, not the package: no import cycle
from posttrain.core.errors import MissingDependencyError
from rewards.sandbox.seccomp import seccomp_filter

FIX = ("install bubblewrap (`make setup`, or `apt-get install bubblewrap`) and allow unprivileged user "
       "namespaces (`sysctl kernel.unprivileged_userns_clone=1`, `user.max_user_namespaces` > 0); or pass "
       "allow_unsandboxed=True to run untrusted code WITHOUT isolation")
#: The uid programs have inside (bubblewrap maps it to the uid it runs as).
INNER_UID = 1000
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/alternatives", "/etc/localtime")
#: The whole environment of a program (and of the compilers) inside.
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
#: bubblewrap options used when this bubblewrap has them (older versions lack some).
OPTIONAL = ("--size", "--disable-userns", "--remount-ro", "--info-fd", "--seccomp")


class SandboxUnavailable(MissingDependencyError):
    """Bubblewrap is missing or cannot create namespaces here, and running without isolation was not allowed."""


@dataclass
class Launch:
    """How to start one sandbox: argv up to the supervisor's own arguments, the fds it must inherit
    (by role: "info_r" is ours to read bubblewrap's --info-fd from, the rest are passed), Popen options."""

    argv: list[str]
    fds: dict[str, int] = field(default_factory=dict)
    popen: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def features(bwrap: str) -> frozenset[str]:
    """Which of OPTIONAL this bubblewrap's --help mentions."""
    try:
        text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, env={}).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(opt for opt in OPTIONAL if opt in text)


def sandbox_python(python: str | None) -> tuple[str, list[str]]:
    """The interpreter run inside (the system's python3 by default) and the directories to bind for it.

    The system's Python lives under /usr, which every sandbox sees; any other one (a venv's, a
    pyenv build) needs its installation prefix bound read-only as well.
    """
    if python is None:
        for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
            if os.access(candidate, os.X_OK):
                return candidate, []
        python = sys.executable
    real = os.path.realpath(python)
    if any(real.startswith(d + "/") for d in SYSTEM_DIRS):
        return python, []
    base = os.path.realpath(sys.base_prefix)
    prefix = base if real.startswith(base + "/") else os.path.dirname(os.path.dirname(real))
    return real, [prefix]


@functools.lru_cache(maxsize=1)
def supervisor_source() -> str:
    """The text of supervisor.py: what the sandbox's Python runs (`-c`), as the checkout is not visible inside."""
    return Path(supervisor.__file__).read_text(encoding="utf-8")


def supervisor_argv(python: str) -> list[str]:
    """The supervisor's command line, up to its own arguments (WORK PIDNS NPROC)."""
    return [python, "-I", "-X", "utf8", "-c", supervisor_source()]


def command(bwrap: str, python: str, binds: list[str], uid: int | None, tmp_mb: int, seccomp: bool = True) -> Launch:
    """Start bubblewrap (as `uid` when given) around the supervisor, with a `tmp_mb` MiB /tmp."""
    have = features(bwrap)
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--uid", str(INNER_UID), "--gid", str(INNER_UID), "--cap-drop", "ALL"]
    if "--disable-userns" in have:
        args.append("--disable-userns")
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in ETC_FILES:
        args += ["--ro-bind-try", f, f]
    for d in binds:
        args += ["--ro-bind", d, d]
    size = ["--size", str(tmp_mb << 20)] if "--size" in have else []
    shm = ["--size", str(min(tmp_mb, 16) << 20)] if "--size" in have else []
    args += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/tmp", *shm, "--tmpfs", "/dev/shm"]
    if "--remount-ro" in have:
        args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    args += ["--chdir", "/tmp", "--clearenv"]
    for key, value in ENV.items():
        args += ["--setenv", key, value]
    launch = Launch(args, popen={"env": {}})  # an empty environment for bubblewrap itself
    if "--info-fd" in have:
        info_r, info_w = os.pipe()
        launch.fds.update(info_r=info_r, info_w=info_w)
        args += ["--info-fd", str(info_w)]
    program = seccomp_filter() if seccomp and "--seccomp" in have else None
    if program is not None:
        sec_r, sec_w = os.pipe()
        os.write(sec_w, program)
        os.close(sec_w)
        launch.fds["seccomp"] = sec_r
        args += ["--seccomp", str(sec_r)]
    args += ["--", *supervisor_argv(python)]
    if uid is not None:
        launch.popen.update(user=uid, group=uid, extra_groups=[])
    return launch


def unsandboxed(python: str, workdir: str) -> Launch:
    """The supervisor as a plain process in `workdir`: no isolation (only when the caller allowed it)."""
    return Launch(supervisor_argv(python), popen={"env": {**ENV, "HOME": workdir, "TMPDIR": workdir}})
