"""A small real HTTP server standing in for an alert receiver (Alertmanager, a chat webhook).

Records every POST (path, headers, JSON body, the status it answered), can be told to
answer the first N requests with 500, and runs on a free loopback port in a thread:

    with Webhook(fail_first=2) as hook:
        ... hook.port ...
        hook.wait_for(1)              # one accepted delivery
        hook.accepted[0].body
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    raw: bytes
    status: int
    at: float

    @property
    def body(self):
        return json.loads(self.raw)


class Webhook:
    def __init__(self, fail_first: int = 0, fail_status: int = 500):
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: list[Delivery] = []
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                with hook._lock:
                    status = hook.fail_status if len(hook.requests) < hook.fail_first else 200
                    hook.requests.append(Delivery(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, raw, status,
                        time.monotonic()))
                reply = b'{"status":"success"}' if status == 200 else b'{"error":"mock failure"}'
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def start(self) -> "Webhook":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> "Webhook":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def accepted(self) -> list[Delivery]:
        """Requests answered 200, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    @property
    def all(self) -> list[Delivery]:
        with self._lock:
            return list(self.requests)

    def wait_for(self, accepted: int, timeout: float = 10) -> list[Delivery]:
        """Waits until at least `accepted` requests were answered 200; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.accepted
            if len(got) >= accepted:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"webhook: {len(self.accepted)} of {accepted} deliveries after {timeout}s "
                           f"({len(self.all)} requests in all)")
