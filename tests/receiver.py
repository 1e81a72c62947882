"""A real webhook receiver on loopback, on a thread of its own: it records every POST (when, headers, body)
and answers as told: 500 to the first ``failing`` attempts, then 200; or hangs ``hang_s`` first (recorded with
status 0: the caller is meant to have given up)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found

    def signed_by(self, secret: str) -> bool:
        want = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, self.headers.get("x-moorage-signature-256", ""))


class Receiver:
    def __init__(self, failing: int = 0, hang_s: float = 0.0) -> None:
        self.failing = failing
        self.hang_s = hang_s
        self.got: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hung = receiver.hang_s
                if hung:
                    time.sleep(hung)
                with receiver._lock:
                    # An attempt it hung on is one the caller gave up on: never counted as accepted.
                    status = 0 if hung else 500 if receiver.failing > 0 else 200
                    receiver.failing -= 1
                    receiver.got.append(
                        Received(time.time(), {k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the caller gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.got if r.status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
