"""The test formats of public code data sets, read into one list of `Case`s per row.

Every shape a row may come in, and what it becomes:

- `tests`: `[{input, output}]` or `{inputs, outputs}` (CodeContests, most SFT/RL sets): stdin/stdout.
- `tests`: `{fn_name, inputs: [[args…]…], outputs}` (APPS/TACO-style, call-based): calls.
- `tests`: `[{input, output, testtype}]` + `fn_name` or `metadata` (LiveCodeBench): stdin, or calls with
  LCB's one JSON argument per line.
- `input_output` (JSON text, `fn_name` optional; APPS, TACO): stdin, or calls.
- `public_test_cases` + `private_test_cases` (+ `metadata` with `func_name`; LiveCodeBench): stdin, or calls.
- `tests`: `["assert …", …]`, or `test_list` (+ `test_imports`, `test_setup_code`; MBPP): a program per assert.
- `test` without `entry_point` (KodCode: `from solution import …`, pytest-style `test_*` functions):
  a program per test function.
- `test` + `entry_point` (`def check(candidate)`; HumanEval, EvalPlus): check.

A call case's expected value is compared with the function's result as JSON values (tuples are
lists), as APPS, TACO and LiveCodeBench do; APPS/TACO also accept `x` for an expected `[x]`. Call
inputs given as text (verl's sandbox format) are LiveCodeBench's: one JSON argument per line, the
output JSON text. A null or absent input is a test of a program that reads nothing: empty stdin (no
arguments for a call). A missing or null expected output, an unknown key, an empty test list or a
malformed cell raises DataError naming the column and the test: the row gets no score, never a
silent 0 (a null output would pass a program that prints nothing).
"""

from __future__ import annotations

import ast
import base64
import io
import json
import pickle
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from posttrain.core.errors import DataError
from rewards.sandbox.protocol import AST_LOCK

#: Imports LeetCode-style solutions assume (LiveCodeBench prepends the like): run before the candidate's code.
PRELUDE = ("from typing import *\nfrom collections import *\nfrom heapq import *\nfrom bisect import *\n"
           "from itertools import *\nfrom functools import *\nfrom math import *\n"
           "import bisect, collections, functools, heapq, itertools, math, re, string, sys\n"
           "sys.setrecursionlimit(50000)\n")
_CASE_KEYS = frozenset({"input", "output", "testtype"})
_IO_KEYS = frozenset({"inputs", "outputs", "fn_name", "input", "output"})
_MAX_DECOMPRESSED = 256 << 20


class Case(NamedTuple):
    """One test of a row. `kind`: "stdin" (payload: the input; expected: the output text) or a harness
    kind, "call" / "check" / "program" (payload: the spec as JSON; expected: the JSON of the value a
    call must return, else None). `alt`: a second accepted value (APPS's unwrapped `[x]`)."""

    kind: str
    payload: str
    expected: str | None = None
    alt: str | None = None


def load_json(value: Any, where: str) -> Any:
    """A cell that may hold JSON text, decoded; other values as they are."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise DataError(f"{where}: not valid JSON ({exc})") from None
    return value


def _stdin(value: Any) -> str:
    """A test's input: no input (null, absent) is empty stdin, a program that reads nothing."""
    if value is None:
        return ""
    if isinstance(value, list):  # some data sets store lines
        return "\n".join(map(str, value))
    return str(value)


def _text(value: Any, where: str) -> str:
    if value is None:
        raise DataError(f"{where} is null: a test needs a value (a null output would pass a program that "
                        "prints nothing)")
    if isinstance(value, list):  # some data sets store lines
        return "\n".join(map(str, value))
    return str(value)


def _canonical(value: Any) -> str:
    """A JSON value's canonical text (tuples as lists, keys sorted): what call results are compared by."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _call(fn_name: str, args: Any, expected: Any, where: str, *, unwrap: bool = False) -> Case:
    if expected is None:
        raise DataError(f"{where}: the expected output is null (a function returning None would pass)")
    if args is None:
        args = []
    elif isinstance(args, str):  # LiveCodeBench's text (verl's sandbox format): one JSON argument per line
        args = [load_json(line, f"{where}, an argument") for line in args.split("\n") if line.strip()]
        expected = load_json(expected, f"{where}, output")
        if expected is None:
            raise DataError(f"{where}: the expected output is null (a function returning None would pass)")
    if not isinstance(args, list):
        raise DataError(f"{where}: the arguments of a call must be a JSON list, got {str(args)[:80]!r}")
    spec = {"kind": "call", "fn_name": fn_name, "args": args, "prelude": PRELUDE}
    alt = _canonical(expected[0]) if unwrap and isinstance(expected, list) and len(expected) == 1 else None
    return Case("call", json.dumps(spec), _canonical(expected), alt)


def _program(test: str, function: str | None = None) -> Case:
    return Case("program", json.dumps({"kind": "program", "test": test, "function": function}))


def _fn_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.isidentifier():
        raise DataError(f"{where}: a function name must be an identifier, got {value!r}")
    return value


def io_cases(value: Any, where: str, fn_name: str | None = None, unwrap: bool = False) -> list[Case]:
    """`{inputs, outputs[, fn_name]}` (APPS/TACO's `input_output`, or a `tests` cell) as cases."""
    unknown = set(value) - _IO_KEYS
    if unknown:
        raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; expected inputs, outputs and optionally fn_name")
    inputs, outputs = value.get("inputs", value.get("input")), value.get("outputs", value.get("output"))
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise DataError(f"{where}: inputs and outputs must be two lists of the same length")
    name = value.get("fn_name") or fn_name
    if name is not None:
        name = _fn_name(name, f"{where}, fn_name")
        return [_call(name, args, out, f"{where}, test {i}", unwrap=unwrap)
                for i, (args, out) in enumerate(zip(inputs, outputs, strict=True))]
    return [Case("stdin", _stdin(i), _text(o, f"{where}, test {k} output"))
            for k, (i, o) in enumerate(zip(inputs, outputs, strict=True))]


def case_list(value: list[Any], where: str, fn_name: str | None = None) -> list[Case]:
    """`[{input, output[, testtype]}]` (LiveCodeBench's testtype "functional": one JSON argument per line)."""
    cases = []
    for i, case in enumerate(value):
        here = f"{where}, test {i}"
        if not isinstance(case, dict) or "output" not in case:
            raise DataError(f"{here}: expected {{\"input\": ..., \"output\": ...}}, got {str(case)[:100]!r}")
        unknown = set(case) - _CASE_KEYS
        if unknown:
            raise DataError(f"{here}: unknown key(s) {sorted(unknown)}; expected input, output and optionally testtype")
        kind = case.get("testtype", "stdin")
        if kind == "functional":
            if fn_name is None:
                raise DataError(f"{here}: a functional test needs the function's name (column `fn_name`, or "
                                "`metadata` with func_name)")
            if case["output"] is None:
                raise DataError(f"{here}: the expected output is null")
            cases.append(_call(fn_name, _stdin(case.get("input")), case["output"], here))
        elif kind == "stdin":
            cases.append(Case("stdin", _stdin(case.get("input")), _text(case["output"], f"{here}, output")))
        else:
            raise DataError(f"{here}: unknown testtype {kind!r} (expected 'stdin' or 'functional')")
    return cases


def asserts(value: Sequence[Any], where: str, setup: str = "") -> list[Case]:
    """A list of assert statements (MBPP's test_list): one program per assert, after `setup`."""
    cases = []
    for i, line in enumerate(value):
        if not isinstance(line, str) or not line.strip().startswith("assert"):
            raise DataError(f"{where}, test {i}: expected an assert statement, got {str(line)[:100]!r}")
        cases.append(_program(f"{setup}{line}\n"))
    return cases


def test_program(test: str, where: str) -> list[Case]:
    """A test program run after the solution (KodCode): one case per `test_*` function, or the whole program."""
    try:
        with AST_LOCK:  # rows are read on several threads (see AST_LOCK)
            tree = ast.parse(test)
    except SyntaxError as exc:
        raise DataError(f"{where}: the test program does not parse ({exc.msg}, line {exc.lineno})") from None
    names = [node.name for node in tree.body
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")]
    return [_program(test, name) for name in names] or [_program(test)]


def lcb_cases(value: Any, where: str) -> list[Any]:
    """LiveCodeBench's test cases: JSON text, or its compressed form base64(zlib(pickle(JSON text)))."""
    if isinstance(value, str) and value.strip() and value.strip()[0] not in "[{":
        try:
            packed = zlib.decompressobj().decompress(base64.b64decode(value), _MAX_DECOMPRESSED)
            value = _StringsOnly(io.BytesIO(packed)).load()
        except Exception as exc:
            raise DataError(f"{where}: neither JSON nor LiveCodeBench's compressed cases ({exc})") from None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
    value = load_json(value, where)
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a list of test cases, got {type(value).__name__}")
    return value


class _StringsOnly(pickle.Unpickler):
    """Unpickles plain data only: any class or function in the stream is refused (nothing runs)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _tests_column(cols: dict[str, Any], name: str | None, language: str) -> list[Case]:
    """`tests`: a stdin/stdout or call list, an `{inputs, outputs}` object, asserts, or a Python test program."""
    where, value = "column `tests`", cols["tests"]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            if language != "python" or "assert" not in value:
                raise DataError(f"{where}: not valid JSON, nor a Python test program") from None
            return test_program(value, where)
    if isinstance(value, dict):
        return io_cases(value, where, name)
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return asserts(value, where)
    if isinstance(value, list | tuple):
        return case_list(list(value), where, name)
    raise DataError(f"{where}: expected a list of tests, got {str(value)[:100]!r}")


def _input_output(cols: dict[str, Any], name: str | None, language: str) -> list[Case]:
    """`input_output` (APPS, TACO): JSON text of `{inputs, outputs, fn_name?}`."""
    value = load_json(cols["input_output"], "column `input_output`")
    if not isinstance(value, dict):
        raise DataError(f"column `input_output`: expected an object with inputs and outputs, got {str(value)[:80]!r}")
    return io_cases(value, "column `input_output`", name, unwrap=True)


def _livecodebench(cols: dict[str, Any], name: str | None, language: str) -> list[Case]:
    """`public_test_cases` / `private_test_cases` (LiveCodeBench): JSON or LCB's compressed form."""
    cases: list[Case] = []
    for column in ("public_test_cases", "private_test_cases"):
        if column in cols:
            where = f"column `{column}`"
            cases += case_list(lcb_cases(cols[column], where), where, name)
    return cases


def _test_list(cols: dict[str, Any], name: str | None, language: str) -> list[Case]:
    """`test_list` (+ `test_imports`, `test_setup_code`; MBPP): a program per assert."""
    imports = cols.get("test_imports")
    imports = imports if isinstance(imports, list | tuple) else ([imports] if imports else [])
    setup = "".join(f"{line}\n" for line in imports)
    setup += f"{cols['test_setup_code']}\n" if cols.get("test_setup_code") else ""
    value = load_json(cols["test_list"], "column `test_list`")
    if not isinstance(value, list | tuple):
        raise DataError("column `test_list`: expected a list of assert statements")
    return asserts(value, "column `test_list`", setup)


def _test_column(cols: dict[str, Any], name: str | None, language: str) -> list[Case]:
    """`test`: `check(candidate)` + `entry_point` (HumanEval, EvalPlus), or test functions / asserts (KodCode)."""
    test, entry_point = cols["test"], cols.get("entry_point")
    if not isinstance(test, str) or not test.strip():
        raise DataError("column `test` must be Python source: check(candidate), or test functions / asserts")
    if entry_point is None and "def check(" not in test:
        return test_program(test, "column `test`")
    if "def check" not in test:
        raise DataError("column `test` must define check(candidate) when `entry_point` is given")
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise DataError(f"column `entry_point` must name the function to check, got {entry_point!r}")
    return [Case("check", json.dumps({"kind": "check", "test": test, "entry_point": entry_point}))]


#: Test formats in the order a row is read: (the columns that hold its tests, their parser). The first format with
#: a non-empty test column wins; the other columns a parser reads (`test_imports`, `entry_point`, ...) come along.
FORMATS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("tests",), _tests_column),
    (("input_output",), _input_output),
    (("public_test_cases", "private_test_cases"), _livecodebench),
    (("test_list",), _test_list),
    (("test",), _test_column),
)
#: Columns a format's parser reads besides its test columns.
_COMPANIONS = ("test_imports", "test_setup_code", "entry_point")
#: Every column that holds (or qualifies) a row's tests: what a code reward passes to `row_cases`.
TEST_COLUMNS = (*(c for names, _ in FORMATS for c in names), *_COMPANIONS, "metadata", "fn_name")


def row_cases(language: str, *, metadata: Any = None, fn_name: Any = None, **columns: Any) -> list[Case]:
    """Every test of one row as cases, whichever columns hold them (`FORMATS`; the module's docstring lists the
    shapes); DataError if none. `fn_name` or `metadata.func_name` names the function of call-style tests."""
    meta = load_json(metadata, "column `metadata`") if metadata is not None else {}
    if not isinstance(meta, dict):
        raise DataError(f"column `metadata`: expected an object, got {str(metadata)[:100]!r}")
    name = fn_name if fn_name is not None else meta.get("func_name", meta.get("fn_name"))
    if name is not None:
        name = _fn_name(name, "column `fn_name`" if fn_name is not None else "column `metadata`, func_name")
    test_columns = [c for names, _ in FORMATS for c in names]
    unknown = sorted(set(columns) - set(TEST_COLUMNS))
    if unknown:
        raise TypeError(f"row_cases() got unexpected column(s) {unknown}")
    given = {k: v for k, v in columns.items() if k in test_columns and v is not None
             and not (isinstance(v, list | tuple | str | dict) and len(v) == 0)}
    if not given and any(isinstance(columns.get(c), list | tuple | str | dict) for c in test_columns):
        raise DataError("the row's test list is empty: nothing to score against")
    parser = next((parse for names, parse in FORMATS if any(c in given for c in names)), None)
    if parser is None:
        raise DataError("row has no tests: give `tests`, `input_output`, `public_test_cases`/`private_test_cases`, "
                        "`test_list`, or `test` (+ `entry_point`)")
    cases = parser({**{k: columns[k] for k in _COMPANIONS if columns.get(k) is not None}, **given}, name, language)
    if not cases:
        raise DataError("the row's test list is empty: nothing to score against")
    if language != "python" and any(c.kind != "stdin" for c in cases):
        raise DataError(f"call-, assert- and check-style tests are Python only, got language {language!r}")
    return cases


def parse_tests(value: Any) -> list[tuple[str, str]]:
    """(input, expected output) pairs of a stdin/stdout `tests` cell; DataError for anything else.

    >>> parse_tests('[{"input": "1 2", "output": "3"}]'), parse_tests({"inputs": ["x"], "outputs": ["y"]})
    ([('1 2', '3')], [('x', 'y')])
    """
    cases = row_cases("python", tests=value)
    if any(c.kind != "stdin" for c in cases):
        raise DataError("column `tests`: expected stdin/stdout tests")
    return [(c.payload, c.expected or "") for c in cases]


def call_passed(stdout: str, case: Case) -> bool:
    """Whether a call case's result (the harness's JSON on stdout) is the expected value."""
    try:
        got = json.loads(stdout)
    except ValueError:
        return False
    return bool(got == json.loads(case.expected or "null")
                or (case.alt is not None and got == json.loads(case.alt)))
