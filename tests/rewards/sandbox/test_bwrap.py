"""The bubblewrap command line: what containment requires of it (rewards/sandbox/bwrap.py), read from the argv."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rewards.sandbox.bwrap import (
    ENV,
    INNER_UID,
    Launch,
    command,
    features,
    sandbox_python,
    supervisor_argv,
    supervisor_source,
    unsandboxed,
)
from tests.rewards.sandbox.helpers import ROOT, needs_bwrap

BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"


@pytest.fixture
def launch() -> Iterator[Launch]:
    made = command(BWRAP, "/usr/bin/python3", [], uid=1_500_000_007, tmp_mb=32)
    yield made
    for fd in made.fds.values():
        os.close(fd)


def _options(argv: list[str]) -> list[str]:
    """bubblewrap's part of the argv (before `--`)."""
    return argv[:argv.index("--")]


@needs_bwrap
def test_namespaces_identity_and_capabilities(launch: Launch) -> None:
    options = _options(launch.argv)
    assert options[0] == BWRAP
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in options
    assert "--share-net" not in options
    assert options[options.index("--cap-drop") + 1] == "ALL"
    assert options[options.index("--uid") + 1] == options[options.index("--gid") + 1] == str(INNER_UID)
    assert launch.popen == {"env": {}, "user": 1_500_000_007, "group": 1_500_000_007, "extra_groups": []}


@needs_bwrap
def test_only_system_files_and_private_tmp_are_visible(launch: Launch) -> None:
    options = _options(launch.argv)
    sources = [options[i + 1] for i, opt in enumerate(options) if opt in ("--bind", "--ro-bind", "--ro-bind-try")]
    assert "--bind" not in options and "--dev-bind" not in options  # nothing of the host is writable
    for path in sources:
        assert path.startswith(("/usr", "/bin", "/sbin", "/lib", "/etc/")), path
    for private in (str(ROOT), str(Path.home()), "/tmp", "/root", "/home", "/work"):
        assert private not in sources
    assert options[options.index("/tmp") - 1] == "--tmpfs" and options[options.index("/dev/shm") - 1] == "--tmpfs"
    if "--size" in features(BWRAP):
        sizes = [options[i + 1] for i, opt in enumerate(options) if opt == "--size"]
        assert sizes == [str(32 << 20), str(16 << 20)]  # /tmp as asked, /dev/shm at most 16 MiB


@needs_bwrap
def test_the_environment_inside_is_only_ours(launch: Launch) -> None:
    options = _options(launch.argv)
    pairs = {options[i + 1]: options[i + 2] for i, opt in enumerate(options) if opt == "--setenv"}
    assert pairs == ENV


@needs_bwrap
def test_the_supervisor_runs_from_its_text_with_seccomp_and_info_fds(launch: Launch) -> None:
    assert launch.argv[launch.argv.index("--") + 1:] == supervisor_argv("/usr/bin/python3")
    assert supervisor_argv("/x/python")[:5] == ["/x/python", "-I", "-X", "utf8", "-c"]
    assert supervisor_argv("/x/python")[5] == supervisor_source()
    have = features(BWRAP)
    options = _options(launch.argv)
    if "--seccomp" in have:
        fd = launch.fds["seccomp"]
        assert options[options.index("--seccomp") + 1] == str(fd)
        assert len(os.read(fd, 1 << 16)) % 8 == 0  # the filter, waiting in the pipe for bubblewrap
    if "--info-fd" in have:
        assert options[options.index("--info-fd") + 1] == str(launch.fds["info_w"])


def test_features_of_a_missing_bwrap_are_none() -> None:
    assert features("/nonexistent/bwrap") == frozenset()


def test_the_interpreter_inside() -> None:
    python, binds = sandbox_python(None)
    if os.access("/usr/bin/python3", os.X_OK):
        assert (python, binds) == ("/usr/bin/python3", [])
    venv_python, venv_binds = sandbox_python(sys.executable)
    real = os.path.realpath(sys.executable)
    if real.startswith("/usr/"):
        assert venv_binds == []
    else:  # e.g. a pyenv build: its installation is bound read-only, nothing wider
        assert venv_python == real and len(venv_binds) == 1 and real.startswith(venv_binds[0] + "/")
        assert venv_binds[0] not in ("/", str(ROOT), str(Path.home()))


def test_unsandboxed_runs_the_same_supervisor_in_its_own_directory(tmp_path: Path) -> None:
    plain = unsandboxed("/usr/bin/python3", str(tmp_path))
    assert plain.argv == supervisor_argv("/usr/bin/python3") and plain.fds == {}
    assert plain.popen["env"] == {**ENV, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
