from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from posttrain.core import hub


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, list[int]]]:
    """A real TCP server on 127.0.0.1 that counts the connections it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server, accepted
    stop(server)


def stop(server: socket.socket) -> None:
    """Stop listening now (a plain close leaves the socket open while a thread waits in accept)."""
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    server.close()


def test_one_probe_answers_the_checks_that_follow_it(
    listener: tuple[socket.socket, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, accepted = listener
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(hub, "_probes", {})
    assert hub.hub_unreachable() is None and hub.hub_unreachable() is None
    deadline = time.monotonic() + 5
    while not accepted and time.monotonic() < deadline:  # the server thread counts the probe after it connected
        time.sleep(0.01)
    stop(server)
    assert hub.hub_unreachable() is None  # the first answer stands for PROBE_TTL_S
    assert len(accepted) == 1
    monkeypatch.setattr(hub, "PROBE_TTL_S", 0.0)
    assert "no connection to 127.0.0.1" in (hub.hub_unreachable() or "")  # asked again once it expired


def test_offline_mode_is_never_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "_probes", {("huggingface.co", 443): (float("inf"), None)})
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unreachable() == "HF_HUB_OFFLINE is set"


@pytest.mark.parametrize(("ref", "local"), [
    ("/abs/model", True), ("./m", True), ("~/m", True), ("a/b/c", True), ("runs/x/sft/model", True),
    ("deepseek-ai/DeepSeek-V3", False), ("gpt2", False),
])
def test_references_only_a_path_can_be(ref: str, local: bool) -> None:
    assert hub.looks_local(ref) is local
