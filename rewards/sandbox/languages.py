"""The languages the sandbox runs: one `Language` entry each, and the check that its toolchain is there.

Adding a language is one entry in `TABLE` (its file name, compile and run commands, the programs it
needs); the supervisor is generic over them. Commands run inside the sandbox, in its /tmp, with
the sandbox's PATH; `{dir}` in a run command is that directory.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from typing import Any

from posttrain.core.errors import DataError, MissingDependencyError
from rewards.sandbox.bwrap import ENV


@dataclass(frozen=True)
class Language:
    """How one language is built and run inside the sandbox.

    `run` None means Python: the supervisor compiles the source itself and runs each test in a fork
    of itself (no interpreter start-up per test). `keep`: the compiler's outputs (file names or
    fnmatch patterns in /tmp) that every test gets afresh; the source itself is not kept for
    compiled languages. `toolchain`: programs that must exist on the sandbox's PATH; `install` says
    how to get them. `memory_markers`: stderr text that means this language's runtime ran out of
    memory, beyond the common ones (see `supervisor.MEMORY_MARKERS`).
    """

    name: str
    source: str
    compile: tuple[str, ...] = ()
    run: tuple[str, ...] | None = None
    keep: tuple[str, ...] = ()
    toolchain: tuple[str, ...] = ()
    install: str = ""
    aliases: tuple[str, ...] = ()
    memory_markers: tuple[str, ...] = ()


TABLE: dict[str, Language] = {language.name: language for language in (
    Language("python", "main.py", aliases=("py", "python3")),
    Language("c", "main.c", compile=("gcc", "-O2", "-std=gnu17", "-pipe", "-o", "prog", "main.c", "-lm"),
             run=("{dir}/prog",), keep=("prog",), toolchain=("gcc",), install="apt-get install gcc",
             aliases=("gcc",)),
    Language("cpp", "main.cpp", compile=("g++", "-O2", "-std=gnu++17", "-pipe", "-o", "prog", "main.cpp"),
             run=("{dir}/prog",), keep=("prog",), toolchain=("g++",), install="apt-get install g++",
             aliases=("c++", "cxx", "cplusplus")),
)}
LANGUAGES = tuple(TABLE)
_ALIASES = {alias: language.name for language in TABLE.values() for alias in language.aliases}


def normalize_language(name: Any) -> str:
    """`python` | `c` | `cpp` | … from a column value (aliases: py, python3, c++, cxx, …); DataError otherwise.

    >>> normalize_language("C++"), normalize_language(None)
    ('cpp', 'python')
    """
    if name is None or (isinstance(name, str) and not name.strip()):
        return "python"
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TABLE:
        raise DataError(f"unsupported language {name!r}: expected one of {', '.join(LANGUAGES)}")
    return key


@functools.cache
def missing_toolchain(name: str) -> str | None:
    """Why `name`'s programs cannot run in the sandbox (naming the fix), or None when they are all there.

    The sandbox sees the host's /usr read-only, so a program on the sandbox's PATH here is one inside.
    """
    entry = TABLE[name]
    missing = [tool for tool in entry.toolchain if shutil.which(tool, path=ENV["PATH"]) is None]
    if not missing:
        return None
    fix = f" (`{entry.install}`)" if entry.install else ""
    return f"cannot run {name} programs: {', '.join(missing)} not found on {ENV['PATH']}; install it{fix}"


def check_toolchain(name: str) -> None:
    """Raise MissingDependencyError naming the fix when `name`'s toolchain is not installed."""
    why = missing_toolchain(name)
    if why is not None:
        raise MissingDependencyError(why)
