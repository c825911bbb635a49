"""The language table: names and aliases, its toolchain check, and that a new entry is all a language needs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from posttrain.core.errors import DataError, MissingDependencyError
from rewards.sandbox import LANGUAGES, Limits, Sandbox, normalize_language
from rewards.sandbox.languages import TABLE, Language, check_toolchain, missing_toolchain
from rewards.sandbox.protocol import language_limits, make_job
from tests.rewards.sandbox.helpers import needs_bwrap


def test_names_and_aliases() -> None:
    assert LANGUAGES == ("python", "c", "cpp", "javascript", "java", "go", "rust", "bash")
    assert [normalize_language(x) for x in ("py", " PYTHON3 ", "gcc", "C++", "cplusplus", "", None, "JS", "node",
                                            "golang", "rs", "sh")] == [
        "python", "python", "c", "cpp", "cpp", "python", "python", "javascript", "javascript", "go", "rust", "bash"]
    with pytest.raises(DataError, match="expected one of python, c, cpp, javascript, java, go, rust, bash"):
        normalize_language("cobol")


def test_the_table_is_consistent() -> None:
    aliases = [alias for entry in TABLE.values() for alias in entry.aliases]
    assert len(aliases) == len(set(aliases)) and not set(aliases) & set(TABLE)
    for name, entry in TABLE.items():
        assert entry.name == name and "/" not in entry.source
        if entry.compile:
            assert entry.keep and entry.run and entry.toolchain, name  # a compiled program needs its outputs kept
        if entry.run is not None:
            assert entry.toolchain and entry.install, name  # anything but Python needs programs of its own


def test_the_toolchains_of_the_built_in_languages_are_here() -> None:
    for name in ("python", "c", "cpp"):  # always; the others only where installed (see test_code.py)
        assert missing_toolchain(name) is None, missing_toolchain(name)
        check_toolchain(name)


def test_java_sources_are_named_after_their_public_class() -> None:
    java = TABLE["java"]
    assert java.source_name("import x;\npublic final class Solution {\n}") == "Solution.java"
    assert java.source_name("class Helper {}\nclass Main {}") == "Main.java"
    job = make_job(java, "public class Solution {}", [""], check=False, limits=Limits(memory_mb=300))
    assert job["source_name"] == "Solution.java" and job["run"][-1] == "Solution" and "-Xmx300m" in job["run"]
    assert job["address_space_mb"] == java.address_space_mb
    raised = language_limits(java, Limits(max_processes=16, compile_memory_mb=1024))
    assert raised.max_processes == java.processes and raised.compile_memory_mb == java.compile_memory_mb
    assert language_limits(java, Limits(max_processes=500)).max_processes == 500  # never lowered
    assert job["env"]["PATH"] == java.search_path() and make_job(TABLE["go"], "", [], check=False,
                                                                 limits=Limits())["env"]["GOCACHE"] == "/tmp/.gocache"


@pytest.fixture
def extra_languages(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Languages added for one test: a shell one, a C one with several outputs, one whose compiler is missing."""
    shell = Language("shell", "main.sh", run=("sh", "main.sh"), toolchain=("sh",), install="apt-get install dash")
    multi = Language("c-multi", "main.c", compile=("sh", "-c", "gcc -o prog main.c && cp prog prog-copy"),
                     run=("{dir}/prog-copy",), keep=("prog*",), toolchain=("gcc", "sh"), install="apt-get install gcc")
    missing = Language("fortran", "main.f90", compile=("gfortran-posttrain-missing", "main.f90"), run=("./a.out",),
                       keep=("a.out",), toolchain=("gfortran-posttrain-missing",),
                       install="apt-get install gfortran")
    for entry in (shell, multi, missing):
        monkeypatch.setitem(TABLE, entry.name, entry)
    missing_toolchain.cache_clear()
    yield
    missing_toolchain.cache_clear()


@pytest.mark.usefixtures("extra_languages")
def test_a_missing_toolchain_names_the_fix() -> None:
    why = missing_toolchain("fortran")
    assert why is not None and "gfortran-posttrain-missing" in why and "apt-get install gfortran" in why
    with pytest.raises(MissingDependencyError, match="apt-get install gfortran"):
        check_toolchain("fortran")


@needs_bwrap
@pytest.mark.usefixtures("extra_languages", "no_leftovers")
def test_a_new_table_entry_is_all_a_language_needs(sandbox: Sandbox) -> None:
    compiled, results = sandbox.run_tests('read x; echo "got $x"; ls /tmp', "shell", ["a", "b"])
    assert compiled is None and [r.stdout for r in results] == ["got a\nmain.sh\n", "got b\nmain.sh\n"]
    program = '#include <stdio.h>\nint main(void) { int n; if (scanf("%d", &n) != 1) return 1; printf("%d\\n", -n); }'
    compiled, results = sandbox.run_tests(program, "c-multi", ["4", "x"])
    assert compiled is not None and compiled.status == "ok"
    assert [(r.status, r.stdout) for r in results] == [("ok", "-4\n"), ("runtime_error", "")]
    with pytest.raises(MissingDependencyError, match="gfortran"):
        sandbox.run_tests("end", "fortran", [""])


@needs_bwrap
def test_a_compiler_that_makes_no_binary_is_a_compile_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TABLE, "c-none", Language("c-none", "main.c", compile=("true",), run=("{dir}/prog",),
                                                  keep=("prog",), toolchain=("true",), install="coreutils"))
    sandbox = Sandbox(Limits(timeout_s=2.0)).check()
    try:
        result = sandbox.run("int main() {}", "c-none")
    finally:
        sandbox.close()
    assert result.status == "compile_error" and "no binary" in result.stderr and "/tmp/prog" in result.stderr


@needs_bwrap
@pytest.mark.usefixtures("extra_languages")
def test_a_row_in_a_language_without_its_toolchain_has_no_score_and_says_how_to_install() -> None:
    from rewards.code import CodeReward

    reward = CodeReward(workers=1)
    try:
        scores, errors = reward.score_with_errors(["```fortran\nend\n```", "```python\nprint(3)\n```"],
                                                  language=["fortran", "python"],
                                                  tests=[[{"input": "", "output": "3"}]] * 2)
    finally:
        reward.close()
    assert scores == [None, 1.0]
    assert errors[0] is not None and "apt-get install gfortran" in errors[0] and errors[1] is None
