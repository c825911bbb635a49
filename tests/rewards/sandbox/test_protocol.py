"""The wire protocol, both ways: the host's half (protocol.py) against the supervisor's (supervisor.py)."""

from __future__ import annotations

import marshal
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from rewards.sandbox import Limits, RunResult
from rewards.sandbox.languages import TABLE
from rewards.sandbox.protocol import (
    RecordReader,
    collect_results,
    decode_record,
    encode_job,
    host_timeout,
    make_job,
)
from rewards.sandbox.supervisor import HEADER_BYTES, encode_record, read_job, result


@contextmanager
def pipe_with(data: bytes) -> Iterator[int]:
    """A pipe's read end that yields `data`, then end of input (written from a thread: it may exceed the buffer)."""
    r, w = os.pipe()

    def feed() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        os.close(w)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        yield r
    finally:
        writer.join()
        os.close(r)


# ---------------------------------------------------------------- host → supervisor: jobs


def test_jobs_cross_the_pipe_unchanged_one_after_another() -> None:
    python = make_job(TABLE["python"], "print(input())", ["a", "b\n\x00c", "é" * 100_000], check=True, limits=Limits())
    c = make_job(TABLE["c"], "int main(){}", [""], check=False, limits=Limits(total_timeout_s=3.0))
    with pipe_with(encode_job(python) + encode_job(c)) as fd:
        assert read_job(fd) == python
        assert read_job(fd) == c
        assert read_job(fd) is None  # the host closed the channel


def test_a_job_is_a_length_then_marshal() -> None:
    job = make_job(TABLE["python"], "x", [""], check=False, limits=Limits())
    wire = encode_job(job)
    assert int.from_bytes(wire[:HEADER_BYTES], "little") == len(wire) - HEADER_BYTES
    assert marshal.loads(wire[HEADER_BYTES:]) == job


def test_a_cut_header_is_the_end_of_input() -> None:
    with pipe_with(encode_job({"a": 1})[:HEADER_BYTES - 1]) as fd:
        assert read_job(fd) is None


def test_a_job_holds_what_the_supervisor_needs_and_no_expected_output() -> None:
    limits = Limits(timeout_s=2.0)
    c = make_job(TABLE["c"], "int main(){}", ["1 2"], check=False, limits=limits)
    assert c["source_name"] == "main.c" and c["compile"][0] == "gcc" and c["run"] == ["{dir}/prog"]
    assert c["keep"] == ["prog"] and c["tests"] == ["1 2"] and c["limits"]["timeout_s"] == 2.0
    assert c["env"]["PATH"] and set(c["env"]) == {"PATH", "HOME", "TMPDIR", "LANG"}
    python = make_job(TABLE["python"], "x", [""], check=True, limits=limits)
    assert python["run"] is None and python["compile"] == [] and python["check"] is True
    assert marshal.loads(marshal.dumps(python, 4)) == python  # only types marshal format 4 carries


def test_the_host_waits_for_every_bound_plus_slack() -> None:
    limits = Limits(timeout_s=2.0, compile_timeout_s=30.0)
    assert host_timeout(TABLE["python"], 3, limits) == pytest.approx(5.0 + 3 * 2.5 + 1.5)
    assert host_timeout(TABLE["c"], 3, limits) == pytest.approx(5.0 + 3 * 2.5 + 30.0 + 1.5)
    total = Limits(timeout_s=2.0, total_timeout_s=4.0)
    assert host_timeout(TABLE["python"], 10, total) == pytest.approx(5.0 + 4.0 + 5.0)


# ---------------------------------------------------------------- supervisor → host: records


RECORDS = [
    {"compile": result("ok", wall_s=0.25)},
    {"test": 0, "result": result("ok", "line 1\nline 2\n", "", 0, 0.001)},
    {"test": 1, "result": result("runtime_error", "'\"\\", "Traceback\n  é\x00\x7f", 1, 0.5, None, True)},
    {"test": 2, "result": result("ok", "\udcff surrogate", passed=True)},
    {"done": True},
]


def test_records_cross_as_lines_unchanged() -> None:
    wire = b"".join(map(encode_record, RECORDS))
    assert wire.count(b"\n") == len(RECORDS)  # one line each, whatever the strings hold
    # repr() escapes newlines, NULs and lone surrogates, so nothing is cut or lost to "replace"
    assert RecordReader().feed(wire) == RECORDS


@pytest.mark.parametrize("size", [1, 2, 7, 64, 1 << 16])
def test_records_survive_any_chunking(size: int) -> None:
    wire = b"".join(map(encode_record, RECORDS[:3]))
    reader = RecordReader()
    out = []
    for i in range(0, len(wire), size):
        out += reader.feed(wire[i:i + size])
    assert out == RECORDS[:3]
    assert reader.feed(b"") == []


def test_anything_but_a_literal_dict_is_ignored() -> None:
    lines = [b"garbage", b"[1, 2]", b"__import__('os').system('touch /tmp/x')", b"{'a': f()}", b"{'a': 1",
             b"{'done': True}", b"\xff\xfe", b"(" * 100_000 + b")" * 100_000]
    assert [decode_record(line) for line in lines] == [None, None, None, None, None, {"done": True}, None, None]
    assert RecordReader().feed(b"\n".join(lines) + b"\n") == [{"done": True}]


# ---------------------------------------------------------------- records → results


def test_records_become_run_results() -> None:
    records = [r for r in RECORDS if "done" not in r]
    compiled, results = collect_results(records, 3, "done", "", 10.0)
    assert compiled == RunResult("ok", wall_s=0.25)
    assert [r.status for r in results] == ["ok", "runtime_error", "ok"] and results[1].truncated


def test_a_failed_compile_has_no_test_results() -> None:
    compiled, results = collect_results([{"compile": result("compile_error", stderr="bad")}], 2, "done", "", 10.0)
    assert compiled is not None and compiled.status == "compile_error" and results == []


def test_unanswered_tests_say_why() -> None:
    answered = [{"test": 0, "result": result("ok", "1\n")}, {"test": 7, "result": result("ok")}]  # 7: no such test
    _, timed_out = collect_results(answered, 3, "timeout", "", 12.5)
    assert [r.status for r in timed_out] == ["ok", "timeout", "timeout"]
    assert timed_out[1].stderr == "[sandbox] killed: the run took more than 12.5 s"
    assert timed_out[1] is not timed_out[2]
    _, died = collect_results(answered, 2, "died", "exit status 3", 12.5)
    assert died[1].status == "killed" and died[1].stderr.endswith("the sandbox ended early: exit status 3")
