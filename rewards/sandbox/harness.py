"""The test harness of call-, assert- and check-style Python tests: the tests in one process, the candidate in another.

Why two processes: a harness that runs in the candidate's process can be fooled from inside it. The
candidate can read the pass token from the harness's frame (`sys._getframe(1).f_locals`) or memory
(ctypes), write it and exit; or return an object whose `__eq__` is always True. So the candidate's
code runs in a process of its own, C, started by exec (`start_candidate`: a fresh interpreter,
nothing of the tests in its memory) once per job and kept from test to test (as the reference
harnesses keep one process per problem; a new one after a test that failed to run through). Each
test runs in a test process T that the supervisor forks (non-dumpable, so C cannot read its memory
or open its fds through /proc); this file runs in T as `__main__`, with CANDIDATE_FDS, its channel
to C. T runs the trusted test code, and every name the tests take from the candidate is a proxy
that sends plain values (marshal: numbers, strings, bytes, lists, tuples, dicts, sets, None) to C
and gets plain values back. Whatever C does, T only ever sees data, so the verdict is T's: T writes
the pass token (run_python does, once this module ran to its end) on a pipe that C never held. An
object C cannot send as data stays in C and T gets a handle to it (methods and attributes are
fetched through it; `==` against a value is False).

T reads the test's spec on stdin (a dict, marshal'ed, in hex):
- `{"kind": "call", "fn_name": f, "args": [...]}`: print the JSON of `f(*args)`; the host compares it.
  `f` is a top-level function, or a method of class `Solution` (LeetCode style, as LiveCodeBench).
- `{"kind": "check", "test": src, "entry_point": f}`: HumanEval; `check(f)` must return.
- `{"kind": "program", "test": src, "function": name | None}`: run a test program (asserts at the
  top level, or a pytest-style `test_*` function by name); it must not raise.
The job's `prelude` runs in C before the candidate's code (LiveCodeBench's imports).
Standard library only, Python >= 3.8, like the supervisor.
"""

import builtins
import marshal
import os
import sys

HEADER_BYTES = 8
MAX_MESSAGE = 256 << 20
PLAIN = (int, float, complex, str, bytes, bool, type(None), list, tuple, dict, set, frozenset)
REQUEST_FD, REPLY_FD = 3, 4  # in the candidate's process

#: What C runs (python -I -S -c SERVER): receive the code, run it as module `solution`, answer calls.
SERVER = r'''
import marshal, os, sys
REQ, REP = 3, 4
def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = os.read(REQ, n - len(data))
        if not chunk:
            os._exit(0)
        data += chunk
    return data
def recv():
    return marshal.loads(read_exact(int.from_bytes(read_exact(8), "little")))
def send(obj):
    data = marshal.dumps(obj, 4)
    data = len(data).to_bytes(8, "little") + data
    view = memoryview(data)
    while view:
        view = view[os.write(REP, view):]
code, prelude, name = recv()
module = type(sys)(name)
module.__dict__["__builtins__"] = __builtins__
sys.modules[name] = module
ns = module.__dict__
failed = None
before = set()
try:
    if prelude:
        exec(prelude, ns)
    before = set(ns)
    exec(code, ns)
except BaseException as exc:
    failed = ("load_error", type(exc).__name__, str(exc)[:2000])
names = {}
for key, value in list(ns.items()) if failed is None else ():
    if key in before or key.startswith("__") or isinstance(value, type(sys)):
        continue
    if callable(value):
        names[key] = ("callable", None)
    else:
        try:
            marshal.dumps(value, 4)
            names[key] = ("value", value)
        except (ValueError, TypeError):
            pass
handles, solution = {}, []
def resolve(target):
    if target[0] == "h":
        return handles[target[1]]
    if target[1] in ns:
        return ns[target[1]]
    cls = ns.get("Solution")
    if isinstance(cls, type) and hasattr(cls, target[1]):
        if not solution:
            solution.append(cls())
        return getattr(solution[0], target[1])
    raise NameError("name %r is not defined" % target[1])
def decode(value):
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "\x00handle":
        return handles[value[1]]
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v) for v in value)
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    return value
while True:
    op, target, args, kwargs = recv()
    if op == "hello" or failed is not None:
        send(failed or ("ready", names))
        continue
    try:
        obj = resolve(target)
        if op == "call":
            value = obj(*decode(args), **decode(kwargs))
        elif op == "get":
            value = getattr(obj, args)
        elif op == "iter":
            value = list(obj)
        elif op == "len":
            value = len(obj)
        elif op == "item":
            value = obj[decode(args)]
        elif op == "contains":
            value = decode(args) in obj
        else:
            value = obj
        if not isinstance(value, (list, tuple, dict, str)) and callable(getattr(value, "tolist", None)):
            value = value.tolist()
        try:
            reply = marshal.dumps(("ok", value), 4)
        except (ValueError, TypeError):
            handles[len(handles) + 1] = value
            reply = marshal.dumps(("handle", len(handles), type(value).__name__), 4)
    except BaseException as exc:
        reply = marshal.dumps(("raise", type(exc).__name__, str(exc)[:2000]), 4)
    view = memoryview(len(reply).to_bytes(8, "little") + reply)
    while view:
        view = view[os.write(REP, view):]
'''


class CandidateError(Exception):
    """The candidate's code failed in a way that has no builtin exception type here (or its process ended)."""


def plain(value, depth=0):
    """Whether `value` is made of plain data only (what C may send back; no code objects)."""
    if depth > 200 or not isinstance(value, PLAIN):
        return False
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
    return True


def start_candidate(code, prelude, env, limit):
    """Start the candidate's process (the supervisor calls this once per job, and again when one died): a fresh
    interpreter, in a process group of its own, that loads `code` (after `prelude`) and then serves the tests.

    `limit()` sets its resource limits. It holds only its two pipe ends, stdin and stdout on /dev/null, stderr
    on /dev/null: nothing of the tests is in its memory or reach. Returns (pid, request fd, reply fd).
    """
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            limit()
            devnull = os.open("/dev/null", os.O_RDWR)
            os.dup2(req_r, 100)
            os.dup2(rep_w, 101)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.dup2(100, REQUEST_FD)
            os.dup2(101, REPLY_FD)
            os.closerange(REPLY_FD + 1, 1 << 16)
            os.execve(sys.executable, [sys.executable, "-I", "-S", "-X", "utf8", "-c", SERVER], env)
        finally:
            os._exit(127)
    os.close(req_r)
    os.close(rep_w)
    for fd in (req_w, rep_r):
        os.set_inheritable(fd, False)
    data = marshal.dumps((code, prelude, "solution"), 4)
    view = memoryview(len(data).to_bytes(HEADER_BYTES, "little") + data)
    try:
        while view:
            view = view[os.write(req_w, view):]
    except OSError:
        pass  # it died at once: the test will say so
    return pid, req_w, rep_r


class Candidate:
    """The channel to the candidate's process (fds given by the supervisor): `request(op, target, args, kwargs)`."""

    def __init__(self, fds):
        if not fds:
            raise CandidateError("the candidate's process could not be started")
        self.req, self.rep = fds
        self.request("hello", None)

    def send(self, obj):
        data = marshal.dumps(obj, 4)
        view = memoryview(len(data).to_bytes(HEADER_BYTES, "little") + data)
        try:
            while view:
                view = view[os.write(self.req, view):]
        except OSError:
            raise CandidateError(self.ended()) from None

    def read_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = os.read(self.rep, min(n - len(data), 1 << 20))
            if not chunk:
                raise CandidateError(self.ended())
            data += chunk
        return data

    def receive(self):
        size = int.from_bytes(self.read_exact(HEADER_BYTES), "little")
        if size > MAX_MESSAGE:
            raise CandidateError(f"the candidate's reply is too large ({size} bytes)")
        try:
            reply = marshal.loads(self.read_exact(size))
        except (EOFError, ValueError, TypeError):
            raise CandidateError("the candidate's process sent something that is not a reply") from None
        if not isinstance(reply, tuple) or not reply or not plain(reply):
            raise CandidateError("the candidate's process sent something that is not plain data")
        return reply

    def ended(self):
        return "the candidate's process ended"

    def request(self, op, target, args=(), kwargs=None):
        self.send((op, target, encode(args), encode(kwargs or {})))
        reply = self.receive()
        if reply[0] == "ready" and op == "hello" and isinstance(reply[1], dict):
            self.names = reply[1]
            return None
        if reply[0] == "load_error" and len(reply) == 3:
            raise CandidateError(f"the code failed to load: {reply[1]}: {reply[2]}")
        if reply[0] == "ok" and len(reply) == 2:
            return reply[1]
        if reply[0] == "handle" and len(reply) == 3:
            return Remote(self, ("h", reply[1]), reply[2])
        if reply[0] == "raise" and len(reply) == 3:
            kind = getattr(builtins, str(reply[1]), None)
            if isinstance(kind, type) and issubclass(kind, Exception) and kind is not CandidateError:
                raise kind(reply[2])
            raise CandidateError(f"{reply[1]}: {reply[2]}")
        raise CandidateError("the candidate's process sent an unknown reply")

    def globals(self):
        """What the tests see of the candidate's module: proxies for its callables, copies of its values."""
        out = {}
        for name, (kind, value) in self.names.items():
            out[name] = Remote(self, ("n", name), name) if kind == "callable" else value
        return out


class Remote:
    """A callable or object that lives in the candidate's process."""

    __slots__ = ("_candidate", "_name", "_target")

    def __init__(self, candidate, target, name):
        self._candidate, self._target, self._name = candidate, target, name

    def __call__(self, *args, **kwargs):
        return self._candidate.request("call", self._target, args, kwargs)

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self._candidate.request("get", self._target, attr)

    def __iter__(self):
        return iter(self._candidate.request("iter", self._target))

    def __len__(self):
        return self._candidate.request("len", self._target)

    def __getitem__(self, key):
        return self._candidate.request("item", self._target, key)

    def __contains__(self, item):
        return self._candidate.request("contains", self._target, item)

    def __repr__(self):
        return f"<{self._name} in the candidate's process>"


def encode(value):
    """Arguments for C: plain values as they are, a handle as its marker."""
    if isinstance(value, Remote):
        if value._target[0] != "h":
            raise TypeError(f"cannot pass {value!r} to the candidate")
        return ("\x00handle", value._target[1])
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(encode(v) for v in value)
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


def to_json(value):
    """A call's result as JSON, the way the reference harnesses see it (tuples are lists)."""
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=repr)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Remote):
        raise TypeError(f"the function returned {value}, which is not a JSON value")
    return value


# ---------------------------------------------------------------- a minimal pytest, for KodCode-style tests


class _Raises:
    def __init__(self, kind, match=None):
        self.kind, self.match, self.value = kind, match, None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            raise AssertionError(f"DID NOT RAISE {self.kind}")
        if not issubclass(kind, self.kind):
            return False
        if self.match is not None:
            import re

            if not re.search(self.match, str(value)):
                raise AssertionError(f"{str(value)!r} does not match {self.match!r}")
        self.value = value
        return True


class _Approx:
    def __init__(self, expected, rel=1e-6, abs=1e-12):
        self.expected, self.rel, self.abs = expected, rel, abs

    def _close(self, a, b):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(self._close(x, y) for x, y in zip(a, b))  # noqa: B905 (Python 3.8 inside)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(self._close(a[k], b[k]) for k in a)
        try:
            return a == b or abs(a - b) <= max(self.rel * abs(b), self.abs)
        except TypeError:
            return False

    def __eq__(self, other):
        return self._close(other, self.expected)


def _pytest_module():
    module = type(sys)("pytest")

    def parametrize(names, values, **_):
        def mark(fn):
            fn.__dict__.setdefault("_parametrize", []).append((names, values))
            return fn
        return mark

    module.raises = _Raises
    module.approx = _Approx
    module.mark = type("mark", (), {"parametrize": staticmethod(parametrize)})()
    return module


def _run_test_function(fn):
    """Call a pytest-style test function, once per parameter set."""
    sets = [{}]
    for names, values in reversed(getattr(fn, "_parametrize", [])):
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        expanded = []
        for params in sets:
            for value in values:
                value = (value,) if len(names) == 1 else tuple(value)
                expanded.append(dict(params, **dict(zip(names, value))))  # noqa: B905
        sets = expanded
    for params in sets:
        fn(**params)


# ---------------------------------------------------------------- the test process's work


def main():
    spec = marshal.loads(bytes.fromhex(sys.stdin.read()))  # not json: its import costs more than a HumanEval test
    candidate = Candidate(CANDIDATE_FDS)  # noqa: F821 (given by the supervisor)
    kind = spec["kind"]
    if kind == "call":
        result = candidate.request("call", ("n", spec["fn_name"]), tuple(spec["args"]))
        import json

        sys.stdout.write(json.dumps(to_json(result)))
        return
    module = type(sys)("solution")
    module.__dict__.update(candidate.globals())
    sys.modules["solution"] = module
    if "pytest" not in sys.modules:
        try:
            import pytest  # noqa: F401
        except ImportError:
            sys.modules["pytest"] = _pytest_module()
    namespace = {"__name__": "__test__", "__builtins__": builtins}
    namespace.update(candidate.globals())
    exec(compile(spec["test"], "<test>", "exec"), namespace)
    if kind == "check":
        if spec["entry_point"] not in namespace:
            raise NameError(f"name {spec['entry_point']!r} is not defined")
        namespace["check"](namespace[spec["entry_point"]])
    elif spec.get("function"):
        _run_test_function(namespace[spec["function"]])


if __name__ == "__main__":
    main()
