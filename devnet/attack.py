"""Misbehaving HTTP clients, over loopback: slow request bodies and idle connections (issue 9, "the front
under attack"). Shared by tests/process/test_front_attack.py and bench/front_attack.py; never imported by
the product. Every loop is bounded by a stop event and every socket has a timeout.
"""

from __future__ import annotations

import select
import socket
import threading
import time

PROBE_TIMEOUT_S = 30.0
SLOW_BODY = b'{"username": "nobody-here", "password": "x'  # padded to Content-Length below
SLOW_LENGTH = 49
SLOW_BYTE_EVERY_S = 0.16


def address_of(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def healthz_once(base: str, source: str = "127.0.0.1") -> float | None:
    """Milliseconds from connecting (from `source`) to the end of a `/healthz` answer; None on failure."""
    host, port = address_of(base)
    started = time.perf_counter()
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S, source_address=(source, 0)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"HTTP/1.1 200"):
        return None
    return (time.perf_counter() - started) * 1000


class SlowBodies(threading.Thread):
    """`count` connections each sending a 49-byte login body one byte every 160 ms, reconnecting when answered
    (or cut off). One thread drives them all with select."""

    def __init__(self, base: str, count: int, byte_every_s: float = SLOW_BYTE_EVERY_S,
                 length: int = SLOW_LENGTH) -> None:
        super().__init__(daemon=True)
        self.address = address_of(base)
        self.count, self.byte_every_s, self.length = count, byte_every_s, length
        self.body = (SLOW_BODY + b'"}').ljust(length, b" ")[:length] if length == SLOW_LENGTH else b"x" * length
        self.stopping = threading.Event()
        self.answers: dict[str, int] = {}
        self.connects = 0

    def _open(self) -> tuple[socket.socket, int]:
        s = socket.create_connection(self.address, timeout=10)
        s.setblocking(False)
        s.sendall(f"POST /api/v1/sessions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {self.length}\r\n\r\n".encode())
        self.connects += 1
        return s, 0

    def run(self) -> None:
        socks = dict(self._open() for _ in range(self.count))  # socket -> bytes of the body sent
        while not self.stopping.is_set():
            tick = time.monotonic()
            for s in list(socks):
                sent = socks[s]
                try:
                    if sent < self.length:
                        s.send(self.body[sent:sent + 1])
                        socks[s] = sent + 1
                except OSError:
                    self._replace(socks, s, "cut")
            readable, _, _ = select.select(list(socks), [], [], 0)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                self._replace(socks, s, data[9:12].decode(errors="replace") if data else "closed")
            self.stopping.wait(max(0.0, self.byte_every_s - (time.monotonic() - tick)))
        for s in socks:
            s.close()

    def _replace(self, socks: dict, s: socket.socket, outcome: str) -> None:
        self.answers[outcome] = self.answers.get(outcome, 0) + 1
        socks.pop(s, None)
        s.close()
        if not self.stopping.is_set():
            try:
                fresh, sent = self._open()
                socks[fresh] = sent
            except OSError:
                self.answers["connect_failed"] = self.answers.get("connect_failed", 0) + 1


def open_idle(base: str, count: int, connect_timeout_s: float = 2.0) -> list[tuple[socket.socket, float]]:
    """Up to `count` sockets from 127.0.0.1: even ones send nothing, odd ones half a request head. Stops at the
    first connection the server does not take within `connect_timeout_s` (its accept queue is full)."""
    address = address_of(base)
    socks = []
    for i in range(count):
        try:
            s = socket.create_connection(address, timeout=connect_timeout_s)
        except OSError:
            break
        if i % 2:
            s.sendall(b"GET /api/v1/me HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer ")
        socks.append((s, time.monotonic()))
    return socks


def watch_closed(socks: list[tuple[socket.socket, float]], timeout_s: float) -> list[float]:
    """Seconds from opening until the server closed each socket (EOF or reset); unclosed ones are left out."""
    open_ = {s.fileno(): (s, opened) for s, opened in socks}
    closed: list[float] = []
    deadline = time.monotonic() + timeout_s
    poller = select.poll()
    for fd in open_:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while open_ and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            s, opened = open_.pop(fd)
            poller.unregister(fd)
            try:
                s.recv(4096)  # an answer (408) or EOF: either way the server ended it
            except OSError:
                pass
            closed.append(time.monotonic() - opened)
    return closed




def open_non_reading(base: str, count: int, requests_each: int = 400) -> list[socket.socket]:
    """`count` connections that pipeline `requests_each` requests for the OpenAPI document (tens of KiB each)
    and never read an answer: the server's writes back up until its side of each socket is full."""
    request = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: bench\r\n\r\n" * requests_each
    socks = []
    for _ in range(count):
        s = socket.create_connection(address_of(base), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        try:
            s.send(request)
        except BlockingIOError:
            pass  # what fits is enough: the server has more than it can answer
        socks.append(s)
    return socks
