"""Raw-socket SSE clients for scripts/bench: time to first event, whole-stream time, and N
streams held open at once (for Envoy's memory).

Plain sockets and a hand-written HTTP/1.1 reader, so the client's own cost per stream is a
few microseconds and the same for every side compared: the clock starts once the connection
is up, right before the request is written, and stops when the recv() that completes the
first `data:` event (TTFT) or the terminating chunk (total) returns.
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class ChunkedReader:
    """Incremental HTTP/1.1 response reader: status, headers, then the body, chunked or
    content-length. feed() returns the body bytes decoded from this piece."""

    SIZE, DATA, CRLF = range(3)

    def __init__(self) -> None:
        self.head = b""
        self.status = 0
        self.headers_done = False
        self.chunked = False
        self.remaining = -1  # content-length left, when not chunked
        self.buf = b""
        self.state = self.SIZE
        self.chunk_left = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if not self.headers_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return b""
            head, data = self.head[:end], self.head[end + 4:]
            self.headers_done = True
            lines = head.split(b"\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
                elif name == b"content-length":
                    self.remaining = int(value)
            if not self.chunked and self.remaining == 0:
                self.done = True
        if not self.chunked:
            if self.remaining >= 0:
                data = data[: self.remaining]
                self.remaining -= len(data)
                self.done = self.remaining == 0
            return data
        buf = self.buf + data if self.buf else data
        pos, n, out = 0, len(buf), []
        while not self.done:
            if self.state == self.SIZE:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                size = int(buf[pos:i].split(b";")[0], 16)
                pos = i + 2
                if size == 0:
                    self.done = True
                    break
                self.chunk_left, self.state = size, self.DATA
            elif self.state == self.DATA:
                if pos >= n:
                    break
                take = min(self.chunk_left, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self.chunk_left -= take
                if self.chunk_left:
                    break
                self.state = self.CRLF
            else:
                if n - pos < 2:
                    break
                pos += 2
                self.state = self.SIZE
        self.buf = buf[pos:]
        return b"".join(out)


@dataclass
class StreamTiming:
    status: int
    ttft_s: float  # request written -> first complete `data:` event
    total_s: float  # request written -> end of the response
    events: int
    body_bytes: int


def timed_stream(port: int, path: str, body: bytes, headers: dict[str, str],
                 timeout: float = 120) -> StreamTiming:
    request = http_request(path, body, headers)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = ChunkedReader()
    body_bytes = 0
    events = 0
    tail = b""
    ttft = None
    try:
        t0 = time.perf_counter()
        sock.sendall(request)
        while not reader.done:
            data = sock.recv(65536)
            now = time.perf_counter()
            if not data:
                break
            piece = reader.feed(data)
            if not piece:
                continue
            body_bytes += len(piece)
            scan = tail + piece
            n = scan.count(b"\n\n")
            if n and ttft is None and b"data:" in scan:
                ttft = now - t0
            events += n
            tail = scan[-1:]
        total = time.perf_counter() - t0
    finally:
        sock.close()
    if ttft is None:
        raise RuntimeError(f"no SSE event received (status {reader.status})")
    return StreamTiming(reader.status, ttft, total, events, body_bytes)


@dataclass
class HeldStreams:
    opened: int
    completed: int
    failed: int
    body_bytes: int
    all_open_window: tuple[float, float]  # monotonic times: every stream started .. first ended


def hold_streams(port: int, n: int, path: str, body: bytes, headers: dict[str, str],
                 on_sample, sample_every: float = 0.25, timeout: float = 300) -> HeldStreams:
    """Opens n streams at once, reads them all to the end (discarding the data, so nothing
    piles up in Envoy's buffers), and calls on_sample(all_open: bool) every sample_every
    seconds while they run."""
    request = http_request(path, body, headers)
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    for s in socks:
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ChunkedReader())
    started = set()
    live = n
    completed = failed = body_bytes = 0
    first_all_open = None
    first_end = None
    deadline = time.monotonic() + timeout
    next_sample = time.monotonic() + sample_every
    try:
        while live and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.05):
                s, reader = key.fileobj, key.data
                try:
                    data = s.recv(262144)
                except BlockingIOError:
                    continue
                if data:
                    got = reader.feed(data)
                    body_bytes += len(got)
                    if got:
                        started.add(s)
                        if first_all_open is None and len(started) == n:
                            first_all_open = time.monotonic()
                if not data or reader.done:
                    if first_end is None:
                        first_end = time.monotonic()
                    sel.unregister(s)
                    s.close()
                    live -= 1
                    if reader.done and reader.status == 200:
                        completed += 1
                    else:
                        failed += 1
            now = time.monotonic()
            if now >= next_sample:
                on_sample(first_all_open is not None and first_end is None)
                next_sample = now + sample_every
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        sel.close()
    return HeldStreams(n, completed, failed, body_bytes,
                       (first_all_open or 0.0, first_end or 0.0))
