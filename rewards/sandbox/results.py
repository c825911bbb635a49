"""What a caller passes in (`Limits`) and gets back (`RunResult`) for one program run."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.core.errors import DataError

STATUSES = ("ok", "runtime_error", "compile_error", "timeout", "memory_limit", "killed")


@dataclass
class RunResult:
    """What one program run did. `status` is one of STATUSES; `passed` is set for check-style runs.

    `wall_s` is the program's own run time (the compiler's for a compile error), without sandbox
    start-up. `stdout`/`stderr` are capped (`truncated` says the cap was hit).
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    wall_s: float = 0.0
    passed: bool | None = None
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def reason(self) -> str:
        """One line for logs and reward errors: the status and the last line of stderr."""
        tail = next((line.strip() for line in reversed(self.stderr.strip().splitlines()) if line.strip()), "")
        return f"{self.status}: {tail[:300]}" if tail else self.status


@dataclass(frozen=True)
class Limits:
    """Per-run bounds. Times in seconds, sizes in MiB unless named in bytes.

    Memory is bounded per process (RLIMIT_AS: Linux has no per-user memory limit without cgroups),
    so one sandbox holds at most about `max_processes` × `memory_mb`, plus `tmp_mb` for /tmp and up
    to 16 MiB for /dev/shm.
    """

    timeout_s: float = 5.0
    memory_mb: int = 512
    compile_timeout_s: float = 30.0
    compile_memory_mb: int = 2048
    max_output_bytes: int = 1 << 20
    max_stderr_bytes: int = 64 << 10
    max_processes: int = 16
    max_file_mb: int = 16
    max_open_files: int = 256
    tmp_mb: int = 64
    #: Time for all tests of one call together (None: timeout_s per test); tests past it are not run.
    total_timeout_s: float | None = None

    def check(self) -> Limits:
        """Itself, once every bound is a positive number; DataError naming the first that is not."""
        for name in ("timeout_s", "memory_mb", "compile_timeout_s", "compile_memory_mb", "max_output_bytes",
                     "max_stderr_bytes", "max_processes", "max_file_mb", "max_open_files", "tmp_mb"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise DataError(f"sandbox limit {name} must be a positive number, got {value!r}")
        if self.total_timeout_s is not None and self.total_timeout_s <= 0:
            raise DataError(f"sandbox limit total_timeout_s must be positive, got {self.total_timeout_s!r}")
        return self
