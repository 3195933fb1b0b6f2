"""`wallet serve`: the actor system and the HTTP front in ONE process.

The actors must live in exactly one process (each shard is the only writer of its accounts), so the HTTP
server may not fork workers that would each start their own actors. The server is Granian's Rust HTTP
stack running Flask (WSGI) on a pool of Python threads inside this process: on this machine it answers
~2x the requests of waitress and ~3x gunicorn gthread in one process (docs/BENCHMARKS.md, "HTTP front").

Granian's in-process (thread-worker) server is enabled upstream only on free-threaded Python builds; its
multi-process server would move the actors into a child process. The Rust worker is the same in both; on a
GIL build it simply takes the GIL when it calls into Python, exactly as it does in a child's main thread.
So `InProcessGranian` lifts that build check; it also ignores SIGHUP, which would respawn the worker.

Shutdown (SIGTERM or SIGINT): stop accepting, finish the requests in flight (each is bounded by the
actors' ask timeout), close idle keep-alive connections, then stop the actors in reverse start order.
Exit 0. If the actor system reports a fatal failure, the same shutdown runs and the process exits 1.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Callable

from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.common import AbstractServer
from granian.server.mt import MTServer

from core.config import Config
from core.limits import HTTP_BACKLOG
from app.system import ActorSystem

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL = 0, 1
SECRET_ENV = ("WALLET_MASTER_KEY", "WALLET_DATABASE_URL", "WALLET_REDIS_URL")

# Granian's own log lines go through the root logger (JSON, see wallet/logs.py) instead of stdout.
GRANIAN_LOG_CONFIG = {
    "formatters": {},
    "handlers": {},
    "loggers": {"_granian": {"propagate": True}, "granian.access": {"level": "WARNING", "propagate": True}},
}


class InProcessGranian(MTServer):
    """Granian's thread-worker server, allowed on the GIL build (see the module docstring)."""

    def _check_gil(self) -> None:
        pass

    def serve(self, spawn_target=None, target_loader=None, wrap_loader=True) -> None:  # noqa: ANN001
        # MTServer.serve only adds a warning about free-threaded builds and refuses the reloader and the
        # memory monitor, which are never configured here.
        AbstractServer.serve(self, spawn_target, target_loader, wrap_loader)

    def signal_handler_reload(self, *args: object, **kwargs: object) -> None:
        # SIGHUP would respawn the worker thread; with actors in-process there is nothing to reload.
        log.info("SIGHUP ignored: restart the process to change configuration")


class WalletServer:
    """Starts the actor system, serves HTTP until told to stop, then stops both. `run()` returns the exit
    code. `stop()` may be called from any thread (signal handlers, the fatal-failure callback, a demo)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.threads = config.http_threads
        self.system: ActorSystem | None = None
        self.fatal: str | None = None
        self._server: InProcessGranian | None = None
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()

    def run(self, on_listening: Callable[[WalletServer], None] | None = None) -> int:
        """Serve until SIGTERM/SIGINT, `stop()`, or a fatal actor failure. `on_listening` runs in its own
        thread once the socket accepts connections (the demo drives the server from there)."""
        self._trap_signals_until_server_owns_them()
        check_can_listen(*self.config.http_host_port)  # before the actors start, not after
        self.system = ActorSystem(self.config, on_fatal=self._on_fatal).start()
        try:
            self._serve(on_listening)
        except SystemExit as exc:  # granian exits non-zero when its worker thread died unexpectedly
            log.error("HTTP server exited", extra={"code": exc.code})
            self.fatal = self.fatal or f"HTTP server exited with {exc.code}"
        finally:
            self.system.stop()
        if self.fatal:
            log.critical("wallet serve stopped after a fatal failure", extra={"reason": self.fatal})
            return EXIT_FATAL
        log.info("wallet serve stopped cleanly")
        return EXIT_OK

    def stop(self) -> None:
        self._stop_requested.set()
        with self._lock:
            if self._server is not None:
                self._server.signal_handler_interrupt()

    @property
    def url(self) -> str:
        host, port = self.config.http_host_port
        return f"http://{host}:{port}"

    def _serve(self, on_listening: Callable[[WalletServer], None] | None) -> None:
        from web.app import create_app

        app = create_app(self.system, self.config)
        host, port = self.config.http_host_port
        _scrub_secrets_from_environ()
        server = InProcessGranian(
            "wallet", address=host, port=port, interface=Interfaces.WSGI, workers=1,
            blocking_threads=self.threads, runtime_threads=1, http=HTTPModes.http1, backlog=HTTP_BACKLOG,
            log_level=_root_log_level(), log_dictconfig=GRANIAN_LOG_CONFIG, websockets=False)
        # Runs after granian has bound the socket and installed its SIGTERM/SIGINT handlers.
        server.on_startup(lambda: self._listening(on_listening))
        with self._lock:
            self._server = server
        if self._stop_requested.is_set():
            return
        server.serve(target_loader=lambda *args: app, wrap_loader=False)

    def _listening(self, on_listening: Callable[[WalletServer], None] | None) -> None:
        log.info("HTTP front listening", extra={"url": self.url, "threads": self.threads})
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


def check_can_listen(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port} (WALLET_HTTP): {exc.strerror}") from None


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
