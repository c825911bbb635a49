"""The languages the sandbox runs: one `Language` entry each, and the check that its toolchain is there.

Adding a language is one entry in `TABLE` (its file name, compile and run commands, the programs it
needs, the bounds its compiler or runtime needs beyond a C program's); the supervisor is generic
over them. Commands run inside the sandbox, in its /tmp, with the sandbox's PATH. Python, C and C++
are always there; JavaScript (node), Java, Go, Rust and Bash run where their toolchain is installed
(`POSTTRAIN_SANDBOX_LANGUAGES="node java go rust" make setup`), and a row in a language whose
toolchain is missing gets no score and an error naming the install command.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

from posttrain.core.errors import DataError, MissingDependencyError
from rewards.sandbox.bwrap import ENV

#: Where `make setup` links a Rust toolchain that the sandbox's user cannot reach where it is (rustup's
#: under /root): inside /usr, so every sandbox sees it (see scripts/setup.sh).
RUST_LINKED = "/usr/local/lib/posttrain/rust"


@dataclass(frozen=True)
class Language:
    """How one language is built and run inside the sandbox.

    `run` None means Python: the supervisor compiles the source itself and runs each test in a fork
    of itself (no interpreter start-up per test). `keep`: the compiler's outputs (file names or
    fnmatch patterns in /tmp) that every test gets afresh; the source itself is not kept for
    compiled languages. `toolchain`: programs that must exist on the sandbox's PATH (`path` first);
    `install` says how to get them. `memory_markers`: stderr text that means this language's runtime
    ran out of memory, beyond the common ones (see `supervisor.MEMORY_MARKERS`).

    Commands may hold `{dir}` (the sandbox's work directory), `{stem}` (the source's name without its
    suffix: Java's public class, found by `stem_pattern`) and `{memory_mb}` (the run's memory bound,
    for runtimes that size their own heap). Runtimes and compilers that need more than a C program
    say so here, and the run gets the larger of this and the caller's bound: `address_space_mb`
    (added to a test's address-space limit: a JVM or V8 reserves far more than it uses),
    `compile_memory_mb`, `processes` (threads count as processes: a JVM starts ~20), `tmp_mb`.
    `env`: variables for compiling and running (Go's caches in /tmp); `binds`: host paths (glob
    patterns) a sandbox must see read-only for this toolchain, when they exist (the JDK's /etc files).
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
    stem_pattern: str = ""
    path: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    binds: tuple[str, ...] = ()
    address_space_mb: int = 0
    compile_memory_mb: int = 0
    processes: int = 0
    tmp_mb: int = 0

    def source_name(self, code: str) -> str:
        """The file the source goes in: `source`, or for Java `<public class>.java`."""
        if self.stem_pattern and (m := re.search(self.stem_pattern, code)):
            return m[1] + os.path.splitext(self.source)[1]
        return self.source

    def search_path(self) -> str:
        """The PATH its commands run with inside the sandbox."""
        return ":".join((*self.path, ENV["PATH"]))


_JVM = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:CompressedClassSpaceSize=64m",
        "-XX:ReservedCodeCacheSize=48m", "-Xshare:auto")
_INSTALL = "POSTTRAIN_SANDBOX_LANGUAGES={} make setup (as root), or `{}`"
TABLE: dict[str, Language] = {language.name: language for language in (
    Language("python", "main.py", aliases=("py", "python3")),
    Language("c", "main.c", compile=("gcc", "-O2", "-std=gnu17", "-pipe", "-o", "prog", "main.c", "-lm"),
             run=("{dir}/prog",), keep=("prog",), toolchain=("gcc",), install="apt-get install gcc",
             aliases=("gcc",)),
    Language("cpp", "main.cpp", compile=("g++", "-O2", "-std=gnu++17", "-pipe", "-o", "prog", "main.cpp"),
             run=("{dir}/prog",), keep=("prog",), toolchain=("g++",), install="apt-get install g++",
             aliases=("c++", "cxx", "cplusplus")),
    Language("javascript", "main.js", run=("node", "--max-old-space-size={memory_mb}", "{dir}/main.js"),
             toolchain=("node",), install=_INSTALL.format("node", "apt-get install nodejs"),
             aliases=("js", "node", "nodejs"), address_space_mb=1536, processes=32,
             memory_markers=("JavaScript heap out of memory", "Array buffer allocation failed")),
    Language("java", "Main.java", stem_pattern=r"\bpublic\s+(?:final\s+|abstract\s+)*class\s+([A-Za-z_$][\w$]*)",
             compile=("javac", "-J-Xmx512m", *(f"-J{flag}" for flag in _JVM), "-encoding", "UTF-8", "-d", ".",
                      "{stem}.java"),
             run=("java", "-Xmx{memory_mb}m", "-Xss64m", *_JVM, "-cp", "{dir}", "{stem}"), keep=("*.class",),
             toolchain=("javac", "java"), install=_INSTALL.format("java", "apt-get install default-jdk-headless"),
             binds=("/etc/java-*",), address_space_mb=2048, compile_memory_mb=3072, processes=64,
             memory_markers=("java.lang.OutOfMemoryError",)),
    Language("go", "main.go", compile=("go", "build", "-o", "prog", "main.go"), run=("{dir}/prog",), keep=("prog",),
             toolchain=("go",), install=_INSTALL.format("go", "apt-get install golang-go"), aliases=("golang",),
             env=(("GOCACHE", "/tmp/.gocache"), ("GOPATH", "/tmp/.gopath"), ("GO111MODULE", "off"),
                  ("GOTOOLCHAIN", "local")),
             compile_memory_mb=4096, processes=128, tmp_mb=256, address_space_mb=512),
    Language("rust", "main.rs", compile=("rustc", "--edition=2021", "-O", "-C", "debuginfo=0", "-C", "codegen-units=4",
                                         "-o", "prog", "main.rs"),
             run=("{dir}/prog",), keep=("prog",), toolchain=("rustc", "cc"), path=(f"{RUST_LINKED}/bin",),
             install=_INSTALL.format("rust", "apt-get install rustc"), aliases=("rs",),
             compile_memory_mb=4096, processes=64, tmp_mb=128, memory_markers=("memory allocation of",)),
    Language("bash", "main.sh", run=("bash", "{dir}/main.sh"), toolchain=("bash",), install="apt-get install bash",
             aliases=("sh", "shell"), memory_markers=("cannot allocate",)),
)}
LANGUAGES = tuple(TABLE)
_ALIASES = {alias: language.name for language in TABLE.values() for alias in language.aliases}


def normalize_language(name: Any) -> str:
    """`python` | `c` | `javascript` | … from a column value (aliases: py, c++, js, golang, rs, sh, …); else DataError.

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
    missing = [tool for tool in entry.toolchain if shutil.which(tool, path=entry.search_path()) is None]
    if not missing:
        return None
    fix = f": {entry.install}" if entry.install else ""
    return (f"cannot run {name} programs: {', '.join(missing)} not found on {entry.search_path()} (what the "
            f"sandbox sees); install it{fix}")


def host_binds() -> list[str]:
    """Host paths the languages' toolchains need bound into every sandbox (those that exist here)."""
    found: list[str] = []
    for entry in TABLE.values():
        for pattern in entry.binds:
            found += [path for path in sorted(glob.glob(pattern)) if path not in found]
    return found


def check_toolchain(name: str) -> None:
    """Raise MissingDependencyError naming the fix when `name`'s toolchain is not installed."""
    why = missing_toolchain(name)
    if why is not None:
        raise MissingDependencyError(why)
