"""A stand-in for `posttrain rollout-server` (vLLM cannot run on CPU): answers GET /health like vLLM's server.

    python stand_in_rollout_server.py --port P [--record FILE] [--delay S] [--exit-code N]

`--record` writes what it was started with (argv, CUDA_VISIBLE_DEVICES, PID); `--delay` waits before listening
(a model loading); `--exit-code` prints a line and exits before listening (a server that fails to start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        print(format % args, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int)
    args, _ = parser.parse_known_args()
    if args.record:
        with open(args.record, "w") as f:
            json.dump({"argv": sys.argv[1:], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                       "pid": os.getpid()}, f)
    print("stand-in rollout server: loading the model", flush=True)
    if args.exit_code is not None:
        print("RuntimeError: CUDA out of memory (stand-in)", flush=True)
        return args.exit_code
    time.sleep(args.delay)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Health)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
