"""Notifier: delivers the event outbox to the webhook endpoints and the Redis stream `<prefix>:events`.

A thin shell over storage.webhooks.Dispatcher (the logic, without threads): one round per Tick, the next Tick
at once while a round found a full batch, else after WEBHOOK_POLL_MS. Exactly one Tick is outstanding. Its
database connection and Redis client open in on_start, in the actor's thread; the dispatcher's few HTTP
worker threads use no connection.
"""

from __future__ import annotations

import logging
import threading
from typing import Mapping

import redis
import requests

from actors.base import Actor, Handler, TickTimer
from core import messages as m
from core.config import Config
from core.limits import WEBHOOK_POLL_MS
from storage.db import database_proxy
from storage.webhooks import Dispatcher, redis_publisher

log = logging.getLogger(__name__)


class Notifier(Actor):
    def __init__(self, config: Config, poll_ms: int = WEBHOOK_POLL_MS) -> None:
        super().__init__()
        self.config = config
        self.poll_ms = poll_ms
        self.dispatcher: Dispatcher | None = None
        self._redis: redis.Redis | None = None
        self._http = threading.local()  # one keep-alive session per delivery thread (a Session is not thread-safe)
        self._sessions: list[requests.Session] = []
        self._ticks = TickTimer(self.actor_ref, m.Tick())

    def on_start(self) -> None:
        db = database_proxy.obj
        db.connect(reuse_if_open=True)
        publish = None
        if self.config.redis_url:
            self._redis = redis.Redis.from_url(self.config.redis_url)
            publish = redis_publisher(self._redis, f"{self.config.redis_prefix}:events")
        ring = self.config.key_ring() if self.config.master_key else None  # opens the endpoints' secrets
        self.dispatcher = Dispatcher(db, self._post, publish=publish, ring=ring)
        self.actor_ref.tell(m.Tick())
        log.info("notifier started", extra={"redis_stream": publish is not None})

    def on_stop(self) -> None:
        self._ticks.cancel()
        if self.dispatcher is not None:
            self.dispatcher.close()
        for session in self._sessions:
            session.close()
        if self._redis is not None:
            self._redis.close()
        database_proxy.obj.close()

    def handlers(self) -> Mapping[type, Handler]:
        return {
            m.Tick: self._tick,
            m.Ping: lambda msg: m.Pong("notifier"),
        }

    def _post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        session = getattr(self._http, "session", None)
        if session is None:
            session = self._http.session = requests.Session()
            self._sessions.append(session)
        return session.post(url, data=body, headers=headers, timeout=timeout_s, allow_redirects=False).status_code

    def _tick(self, message: m.Tick) -> None:
        busy = False
        try:
            busy = self.dispatcher.run_once().busy
        except Exception:  # noqa: BLE001 - the database may be down; the next round retries
            log.warning("notifier round failed; retried", exc_info=True)
            database_proxy.obj.close()
        finally:
            if busy:
                self.actor_ref.tell(m.Tick())
            else:
                self._ticks.after(self.poll_ms / 1000)


