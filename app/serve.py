"""`wallet serve`: the actor system and the HTTP front in ONE process.

The actors must live in exactly one process (each shard is the only writer of its accounts), so the HTTP
server may not fork workers that would each start their own actors. The server is Granian's Rust HTTP
stack running Flask (WSGI) on a pool of Python threads inside this process: on this machine it answers
~2x the requests of waitress and ~3x gunicorn gthread in one process (docs/BENCHMARKS.md, "HTTP front").

Granian's in-process (thread-worker) server is enabled upstream only on free-threaded Python builds; its
multi-process server would move the actors into a child process. The Rust worker is the same in both; on a
GIL build it simply takes the GIL when it calls into Python, exactly as it does in a child's main thread.
So `InProcessGranian` lifts that build check; it also ignores SIGHUP, which would respawn the worker.

Granian runs its RSGI interface, and `app/gate.py` bridges it to the Flask app (WSGI): a request's body is
read on granian's event loop, with a size and a time limit, before one of the view threads is taken, so slow
clients cost memory, not threads. Connections: at most HTTP_CONNECTIONS_MAX at once (granian's
"backpressure", bounded by the file descriptors this process may open), and a connection that sends no
complete request head for the idle timeout (WALLET_HTTP_IDLE_TIMEOUT_S; hyper's header read timeout, which
also runs while a keep-alive connection waits for its next request) is closed. docs/BENCHMARKS.md, "The
front under attack", has the measurements behind these choices.

Shutdown (SIGTERM or SIGINT): stop accepting, finish the requests in flight, close idle keep-alive
connections, then stop the actors in reverse start order. Exit 0. Requests in flight are bounded (body
read timeout, then the actors' ask timeout), but a client may also stop reading its response: after
HTTP_DRAIN_TIMEOUT_S the HTTP worker is abandoned (its threads are daemons) and the actors stop anyway.
If the actor system reports a fatal failure, the same shutdown runs and the process exits 1.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import threading
from typing import Callable

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.common import AbstractServer
from granian.server.mt import MTServer

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from app.gate import Gate
from app.system import ActorSystem
from core.config import Config
from core.limits import (
    HTTP_BACKLOG, HTTP_CONNECTIONS_MAX, HTTP_DRAIN_TIMEOUT_S, HTTP_FDS_SPARE, OPS_CONNECTIONS_MAX, OPS_READ_TIMEOUT_S,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL = 0, 1
SECRET_ENV = ("WALLET_MASTER_KEY", "WALLET_DATABASE_URL", "WALLET_REDIS_URL")

# Granian's own log lines go through the root logger (JSON, see wallet/logs.py) instead of stdout.
GRANIAN_LOG_CONFIG = {
    "formatters": {},
    "handlers": {},
    "loggers": {"_granian": {"propagate": True}, "granian.access": {"level": "WARNING", "propagate": True}},
}


class _PollingEvent(threading.Event):
    """An Event whose untimed wait wakes every half second. Granian's main loop waits on one for its SIGTERM
    handler; Python runs signal handlers only on the main thread, and only when it runs bytecode. When the
    kernel delivers SIGTERM to another thread (any thread may get a process-wide signal), a main thread
    blocked in an untimed wait never runs the handler: CI saw `wallet serve` ignore SIGTERM for 60 s so."""

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            return super().wait(timeout)
        while not super().wait(0.5):
            pass
        return True


class InProcessGranian(MTServer):
    """Granian's thread-worker server, allowed on the GIL build (see the module docstring)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.main_loop_interrupt = _PollingEvent()

    def _check_gil(self) -> None:
        pass

    def serve(self, spawn_target=None, target_loader=None, wrap_loader=True) -> None:  # noqa: ANN001
        # MTServer.serve only adds a warning about free-threaded builds and refuses the reloader and the
        # memory monitor, which are never configured here.
        AbstractServer.serve(self, spawn_target, target_loader, wrap_loader)

    def signal_handler_reload(self, *args: object, **kwargs: object) -> None:
        # SIGHUP would respawn the worker thread; with actors in-process there is nothing to reload.
        log.info("SIGHUP ignored: restart the process to change configuration")

    def _spawn_worker(self, idx, target, callback_loader):  # noqa: ANN001, ANN202
        worker = super()._spawn_worker(idx, target, callback_loader)
        # Daemon threads: a worker that does not stop within the drain must not hold the process (granian's
        # own watcher thread joins the worker, so it is replaced by a daemon one too).
        worker.inner.daemon = True
        worker._watch = lambda: threading.Thread(target=worker._watcher, name="granian-watcher", daemon=True).start()
        return worker

    def _stop_workers(self) -> None:
        """As granian's, but bounded: a thread cannot be killed, so one still busy after the drain is left."""
        for worker in self.wrks:
            worker.terminate()
        for worker in self.wrks:
            worker.join(HTTP_DRAIN_TIMEOUT_S)
            if worker.inner.is_alive():
                log.warning("HTTP connections still open after the drain; closing them with the process",
                            extra={"drain_s": HTTP_DRAIN_TIMEOUT_S})
        self.wrks.clear()


class _OpsRequestHandler(WSGIRequestHandler):
    """Each connection of the operations listener: a socket timeout bounds every read and write, no banner,
    and werkzeug's per-request log line goes to debug (scrapes every few seconds are not news)."""

    timeout = OPS_READ_TIMEOUT_S
    server_version = ""
    sys_version = ""

    def version_string(self) -> str:
        return ""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("ops request", extra={"path": self.path, "status": str(code)})


class OpsListener(ThreadedWSGIServer):
    """The operations listener (WALLET_OPS_HTTP: /healthz, /readyz, /metrics), a small threaded server in this
    process: at most OPS_CONNECTIONS_MAX connections at once (more are closed at once), each with timeouts.
    It is for a monitoring system on a private network or loopback, never for the public."""

    daemon_threads = True

    def __init__(self, host: str, port: int, app: Callable) -> None:
        super().__init__(host, port, app, handler=_OpsRequestHandler)
        self._slots = threading.BoundedSemaphore(OPS_CONNECTIONS_MAX)

    def process_request(self, request, client_address) -> None:  # noqa: ANN001
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:  # noqa: ANN001
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> OpsListener:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="ops-listener",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class WalletServer:
    """Starts the actor system, serves HTTP until told to stop, then stops both. `run()` returns the exit
    code. `stop()` may be called from any thread (signal handlers, the fatal-failure callback, a demo)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.threads = config.http_threads
        self.system: ActorSystem | None = None
        self.fatal: str | None = None
        self._server: InProcessGranian | None = None
        self.ops: OpsListener | None = None
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()

    def run(self, on_listening: Callable[[WalletServer], None] | None = None) -> int:
        """Serve until SIGTERM/SIGINT, `stop()`, or a fatal actor failure. `on_listening` runs in its own
        thread once the socket accepts connections (the demo drives the server from there)."""
        self._trap_signals_until_server_owns_them()
        if "all" in self.config.roles or "gate" in self.config.roles:
            check_can_listen(*self.config.http_host_port)  # before the actors start, not after
        check_can_listen(*self.config.ops_host_port, variable="WALLET_OPS_HTTP")
        self.system = ActorSystem(self.config, on_fatal=self._on_fatal)
        self.system.start()  # a cluster host may wait here for shards another host holds; stop() ends the wait
        if self.config.rpc_urls:  # in the background: a node that does not answer must not delay the start
            threading.Thread(target=self.system.probe_nodes, name="node-exposure", daemon=True).start()
        try:
            self._serve(on_listening)
        except SystemExit as exc:  # granian exits non-zero when its worker thread died unexpectedly
            log.error("HTTP server exited", extra={"code": exc.code})
            self.fatal = self.fatal or f"HTTP server exited with {exc.code}"
        finally:
            if self.ops is not None:
                self.ops.stop()
            self.system.stop()
        if self.fatal:
            log.critical("wallet serve stopped after a fatal failure", extra={"reason": self.fatal})
            return EXIT_FATAL
        log.info("wallet serve stopped cleanly")
        return EXIT_OK

    def stop(self) -> None:
        self._stop_requested.set()
        if self.system is not None:
            self.system.abort_start()
        with self._lock:
            if self._server is not None:
                self._server.signal_handler_interrupt()

    @property
    def url(self) -> str:
        host, port = self.config.http_host_port
        return f"http://{host}:{port}"

    @property
    def ops_url(self) -> str:
        host, port = self.ops.server_address[:2] if self.ops is not None else self.config.ops_host_port
        return f"http://{host}:{port}"

    def _serve(self, on_listening: Callable[[WalletServer], None] | None) -> None:
        from web.app import create_app, create_ops_app

        api = create_app(self.system, self.config)
        self.ops = OpsListener(*self.config.ops_host_port, create_ops_app(api)).start()
        log.info("operations listener", extra={"url": self.ops_url})
        if not self.system.has_role("gate"):
            self._serve_without_api(on_listening)
            return
        gate = Gate(api, self.threads)
        host, port = self.config.http_host_port
        _scrub_secrets_from_environ()
        connections = connections_allowed()
        idle_ms = self.config.http_idle_timeout_s * 1000
        server = InProcessGranian(
            "wallet", address=host, port=port, interface=Interfaces.RSGI, workers=1, blocking_threads=1,
            runtime_threads=1, http=HTTPModes.http1, backlog=HTTP_BACKLOG, backpressure=connections,
            http1_settings=HTTP1Settings(header_read_timeout=idle_ms, keep_alive=True),
            log_level=_root_log_level(), log_dictconfig=GRANIAN_LOG_CONFIG, websockets=False)
        # Runs after granian has bound the socket and installed its SIGTERM/SIGINT handlers.
        server.on_startup(lambda: self._listening(on_listening, connections))
        with self._lock:
            self._server = server
        if self._stop_requested.is_set():
            return
        server.serve(target_loader=lambda *args: gate, wrap_loader=False)

    def _serve_without_api(self, on_listening: Callable[[WalletServer], None] | None) -> None:
        """A cluster process without the gate role: only the ops listener, until told to stop (SIGTERM and
        SIGINT stay trapped by `_trap_signals_until_server_owns_them`)."""
        log.info("serving without the HTTP API (no gate role)", extra={"roles": ",".join(sorted(self.system.roles))})
        if on_listening is not None:
            threading.Thread(target=on_listening, args=(self,), name="on-listening", daemon=True).start()
        while not self._stop_requested.wait(0.5):
            pass

    def _listening(self, on_listening: Callable[[WalletServer], None] | None, connections: int) -> None:
        log.info("HTTP front listening", extra={"url": self.url, "threads": self.threads, "connections_max": connections,
                                                "idle_timeout_s": self.config.http_idle_timeout_s})
        if self._stop_requested.is_set():  # a signal arrived while the actors were starting
            self.stop()
        if on_listening is not None:
            threading.Thread(target=on_listening, args=(self,), name="on-listening", daemon=True).start()

    def _on_fatal(self, reason: str) -> None:
        log.critical("actor system failed; shutting down", extra={"reason": reason})
        self.fatal = reason
        self.stop()

    def _trap_signals_until_server_owns_them(self) -> None:
        """SIGTERM during the actors' start-up still means a clean stop (granian replaces these later)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *args: self.stop())


class ListenError(Exception):
    """The HTTP address cannot be bound (in use, not local, not permitted)."""


def check_can_listen(host: str, port: int, variable: str = "WALLET_HTTP") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port} ({variable}): {exc.strerror}") from None


def connections_allowed() -> int:
    """How many connections the server may hold: HTTP_CONNECTIONS_MAX, if this process may open that many
    file descriptors (the soft limit is raised to the hard one as far as needed), else what fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HTTP_CONNECTIONS_MAX + HTTP_FDS_SPARE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return HTTP_CONNECTIONS_MAX
    # Keep the spare for everything else, or half of a small limit when the spare would not fit.
    fits = min(HTTP_CONNECTIONS_MAX, max(soft - HTTP_FDS_SPARE, soft // 2))
    if fits < HTTP_CONNECTIONS_MAX:
        log.warning("open-file limit caps HTTP connections; raise `ulimit -n`",
                    extra={"nofile": soft, "connections_max": fits, "wanted": HTTP_CONNECTIONS_MAX})
    return max(fits, 1)


def _scrub_secrets_from_environ() -> None:
    """Granian copies os.environ into every request's WSGI environ; the configuration is already parsed,
    so the master key and credential-bearing URLs leave the environment rather than ride along."""
    for name in SECRET_ENV:
        os.environ.pop(name, None)


def _root_log_level() -> LogLevels:
    """Granian sets its logger's level itself; make it follow `wallet --log-level`."""
    name = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    return LogLevels(name) if name in LogLevels.__members__ else LogLevels.info


def serve(config: Config) -> int:
    return WalletServer(config).run()
