"""The gate between granian and the Flask app: request bodies are read before a Python thread is taken.

Granian's WSGI interface hands the app a body that is read on the app's own thread, with no time limit:
a client that sends `Content-Length: 49` and then one byte every 160 ms holds one of the 64 view threads
for 8 s, and one that sends nothing holds it for ever (and SIGTERM waits for it). So `wallet serve` runs
granian's RSGI interface instead, and this gate bridges it to WSGI:

1. On granian's event loop (one thread, asyncio), the body is read in full: at most BODY_MAX_BYTES
   (a larger Content-Length is refused before anything is read, a chunked body is cut at the limit) and
   within HTTP_BODY_READ_TIMEOUT_MS, or the client gets 413 / 408 and the connection is closed. Waiting
   costs no thread, so 200 (or 5,000) slow clients wait side by side.
2. The complete request then goes to a bounded pool of threads that run the WSGI app (Flask); the loop
   sends the response the thread made. A thread is only ever busy with a request whose body is already here.

Headers with an underscore in their name are dropped (as nginx and gunicorn do): `X_Forwarded_For` would
otherwise land in the same WSGI key as `X-Forwarded-For`. Granian adds `Server: granian` to every response
that has no Server header; the gate sends an empty one, so the server software is not announced.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import queue
import sys
import threading
from typing import Any, Callable, Iterable

from core.limits import BODY_MAX_BYTES, HTTP_BODY_READ_TIMEOUT_MS
from web.errors import PROBLEM_MIMETYPE, problem_body

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

# Sent with every response: granian fills in `Server: granian` only when the app sent none.
BANNER_HEADER = ("server", "")
_STOP = object()


class ViewThreads:
    """A fixed set of daemon threads running jobs from one queue. Daemon: a view stuck past the shutdown
    deadline must not keep the process alive (app/serve.py bounds the shutdown, not the views)."""

    def __init__(self, count: int, name: str = "http") -> None:
        assert count >= 1
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(_STOP)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            try:
                job()
            except Exception:  # noqa: BLE001 - a job answers its own errors; this is a bug in the gate
                log.exception("HTTP view thread: job failed")


class Gate:
    """An RSGI application (granian calls `__rsgi__` once per request) over a WSGI application."""

    def __init__(self, app: WSGIApp, threads: int, body_timeout_ms: int = HTTP_BODY_READ_TIMEOUT_MS,
                 body_max_bytes: int = BODY_MAX_BYTES) -> None:
        assert body_timeout_ms >= 1 and body_max_bytes >= 1
        self.app = app
        self.threads_count = threads
        self.body_timeout_s = body_timeout_ms / 1000
        self.body_max_bytes = body_max_bytes
        self.threads: ViewThreads | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Answered requests whose coroutine may end, handed to the loop in bunches: one wake-up of the loop
        # (call_soon_threadsafe) for all that finished since the last one, not one per request.
        self._finished: collections.deque[asyncio.Future] = collections.deque()
        self._wake_pending = False
        self._wake_lock = threading.Lock()

    # -- RSGI lifecycle (granian calls these on its worker thread, the loop not running) -------------------
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.threads = ViewThreads(self.threads_count)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.threads is not None:
            self.threads.stop()

    # -- one request ----------------------------------------------------------------------------------------
    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":  # websockets are off; nothing else is spoken
            return
        body = await self._body(scope, protocol)
        if body is None:
            return  # answered (408, 413, 400) or the client left
        done = self.loop.create_future()
        environ = wsgi_environ(scope, body)
        self.threads.submit(lambda: self._run(environ, done))
        # The response is sent from here, on the loop: granian's protocol is the loop's (sending it from a view
        # thread cost a fifth of the GIL's time under load). A coroutine that ended unanswered would be a 500.
        status, headers, body = await done
        protocol.response_bytes(status, headers, body)

    async def _body(self, scope: Any, protocol: Any) -> bytes | None:
        headers = scope.headers
        length = headers.get("content-length")
        if length is None and "transfer-encoding" not in headers:
            return b""
        if length is not None:
            if not length.isdigit():  # hyper already refuses a malformed one; be strict anyway
                _refuse(protocol, 400, "bad_request", "Content-Length must be a number")
                return None
            if int(length) > self.body_max_bytes:
                _refuse(protocol, 413, "payload_too_large", f"the body is limited to {self.body_max_bytes} bytes")
                return None
        try:
            async with asyncio.timeout(self.body_timeout_s):
                if length is not None:
                    return await protocol()  # hyper stops at Content-Length
                return await self._chunks(protocol)
        except TimeoutError:
            _refuse(protocol, 408, "request_timeout",
                    f"the body must arrive within {self.body_timeout_s:g} s of the headers")
        except _TooLarge:
            _refuse(protocol, 413, "payload_too_large", f"the body is limited to {self.body_max_bytes} bytes")
        except Exception:  # noqa: BLE001 - granian's protocol errors: the client went away mid-body
            log.debug("request body not received", exc_info=True)
            protocol.response_empty(400, [BANNER_HEADER, ("connection", "close")])
        return None

    async def _chunks(self, protocol: Any) -> bytes:
        parts, size = [], 0
        async for chunk in protocol:
            size += len(chunk)
            if size > self.body_max_bytes:
                raise _TooLarge()
            parts.append(chunk)
        return b"".join(parts)

    def _run(self, environ: dict, done: asyncio.Future) -> None:
        """On a view thread: run the app, then hand its response to the request's coroutine."""
        response = None
        try:
            response = call_wsgi(self.app, environ)
        except Exception:  # noqa: BLE001 - Flask answers its own errors; this is a failure outside them
            log.exception("WSGI application failed outside its error handlers")
        finally:
            if response is None:  # built only when needed: it is a JSON dump, on every request otherwise
                response = _problem(500, "internal_error", "an unexpected error occurred; it has been logged")
            self._finished.append((done, response))
            with self._wake_lock:
                wake, self._wake_pending = not self._wake_pending, True
            if wake:
                self.loop.call_soon_threadsafe(self._finish_all)

    def _finish_all(self) -> None:
        """On the loop: end the coroutines of every request answered so far."""
        with self._wake_lock:
            self._wake_pending = False
        finished = self._finished
        while finished:
            done, response = finished.popleft()
            if not done.done():
                done.set_result(response)


class _TooLarge(Exception):
    pass


def _problem(status: int, code: str, detail: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """A problem answer from the gate itself; the connection closes after it (its body may be unread)."""
    body = problem_body(status, code, detail).encode()
    return status, [BANNER_HEADER, ("content-type", PROBLEM_MIMETYPE), ("connection", "close")], body


def _refuse(protocol: Any, status: int, code: str, detail: str) -> None:
    protocol.response_bytes(*_problem(status, code, detail))


def call_wsgi(app: WSGIApp, environ: dict) -> tuple[int, list[tuple[str, str]], bytes]:
    started: list = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
        started[:] = [status, headers]
        return _no_write

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return int(status[:3]), [*headers, BANNER_HEADER], body


def _no_write(data: bytes) -> None:
    raise RuntimeError("the write() callable of WSGI is not supported")


def wsgi_environ(scope: Any, body: bytes) -> dict[str, Any]:
    """PEP 3333 environ of an RSGI scope. PATH_INFO is the decoded path as latin-1 (PEP 3333's "bytes in a
    str"), QUERY_STRING stays raw; repeated headers are joined with commas (cookies with '; ')."""
    host, _, port = scope.server.rpartition(":")
    client_host, _, client_port = scope.client.rpartition(":")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": host.strip("[]"),
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": "HTTP/2" if scope.http_version == "2" else f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": client_host.strip("[]"),
        "REMOTE_PORT": client_port,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for name, value in scope.headers.items():
        if "_" in name:
            continue
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
            continue
        if name in ("content-length", "transfer-encoding"):
            continue  # the body is read already: CONTENT_LENGTH says how much there is
        key = "HTTP_" + name.upper().replace("-", "_")
        if key in environ:
            environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            environ[key] = value
    return environ
