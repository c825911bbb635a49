"""The sandbox as a tool: what a call returns for every way a program ends, in the model's words, never raising."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from posttrain.core.errors import MissingDependencyError, PluginError
from posttrain.core.tools import ToolSpec, is_error_output
from rewards.sandbox.languages import missing_toolchain
from rewards.sandbox.tool import SandboxTool, cap
from tests.rewards.sandbox.helpers import needs_bwrap

pytestmark = [needs_bwrap, pytest.mark.usefixtures("no_leftovers")]


@pytest.fixture(scope="module")
def tool() -> Iterator[SandboxTool]:
    tool = SandboxTool.from_spec(ToolSpec(name="python", timeout_s=1.0, memory_mb=128, max_output_chars=100))
    yield tool
    tool.close()


def test_a_program_s_output_is_the_tool_s_output(tool: SandboxTool) -> None:
    assert tool(code="print(3142 * 2718)") == "8539956\n"
    assert tool(code="import sys; print('out'); print('warn', file=sys.stderr)") == "out\nwarn\n"
    assert tool(code="x = 1") == ""


@pytest.mark.parametrize(("code", "status", "shows"), [
    ("print('before'); 1/0", "[tool error: runtime error, exit code 1]", "ZeroDivisionError: division by zero"),
    ("import sys; sys.exit(3)", "[tool error: runtime error, exit code 3]", ""),
    ("while True: pass", "[tool error: timeout after 1 s]", ""),
    ("x = bytearray(1 << 30)", "[tool error: memory limit]", "MemoryError"),
    ("def f(:\n  pass", "[tool error: compile error]", "SyntaxError"),
])
def test_a_failed_program_says_how_it_failed(tool: SandboxTool, code: str, status: str, shows: str) -> None:
    out = tool(code=code)
    assert is_error_output(out) and out.endswith(status), out
    assert shows in out


def test_long_output_is_cut_in_the_middle(tool: SandboxTool) -> None:
    out = tool(code="print('a' * 500 + 'b' * 500)")
    assert out.startswith("a" * 50) and out.endswith("b" * 49 + "\n")
    assert "characters cut" in out and len(out) < 200
    assert cap("short", 10) == "short"


def test_bad_arguments_are_an_error_output_not_an_exception(tool: SandboxTool) -> None:
    assert tool(script="print(1)") == "[tool error: bad arguments ['script']: expected one string argument `code`]"
    assert is_error_output(tool(code=["print(1)"]))
    assert is_error_output(tool(code="print(1)", extra=1))


def test_it_counts_calls_failures_and_seconds() -> None:
    tool = SandboxTool("python", timeout_s=1.0)
    tool(code="print(1)")
    tool(code="1/0")
    calls, errors, seconds = tool.counters()
    tool.close()
    assert (calls, errors) == (2, 1) and 0 < seconds < 30


def test_its_schema_is_what_chat_templates_take() -> None:
    bash = SandboxTool("bash", description="Run a shell script.")
    schema = bash.schema()
    bash.close()
    assert schema["function"]["name"] == "bash" and schema["function"]["description"] == "Run a shell script."
    assert schema["function"]["parameters"]["required"] == ["code"]


def test_other_languages_and_what_is_refused_up_front() -> None:
    c = SandboxTool("c", timeout_s=2.0)
    assert c(code='#include <stdio.h>\nint main(){printf("%d\\n", 6*7);}') == "42\n"
    assert c(code="int main( {").endswith("[tool error: compile error]")
    c.close()
    with pytest.raises(PluginError, match="tool 'cobol'"):
        SandboxTool("cobol")
    missing = next((lang for lang in ("rust", "go", "java", "javascript") if missing_toolchain(lang)), None)
    if missing is not None:  # a language whose toolchain is not here fails the stage before it starts
        with pytest.raises(MissingDependencyError, match=f"tool '{missing}': cannot run {missing} programs"):
            SandboxTool(missing)
