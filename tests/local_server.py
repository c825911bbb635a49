"""A real HTTP server on 127.0.0.1 for the tests of clients that talk to one (OpenAI-compatible endpoints)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free port in a thread; yield its base URL up to `/v1`; shut it down after."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def send_json(handler: BaseHTTPRequestHandler, code: int, payload: Any,
              headers: Mapping[str, str] | None = None) -> None:
    """Answer with `payload` as JSON (a str is sent as it is: a malformed body); a client that timed out and left
    is not an error of the server's."""
    data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
    try:
        handler.send_response(code)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
