"""The news between the withdrawal flow's parts (the original design's `blockout_req`, `blockout_ctx`,
`blockout_rsp`): Redis Streams when Redis is configured, in-process callbacks in the embedded mode.

News only: the database is the truth. A subscriber that misses an item (Redis flushed, a process restarted)
finds the same work in the database on its next tick; an item seen twice does nothing twice, because every
step it starts is a conditional update.

- blockout_req: a shard has committed withdrawals moved to `approved` (fields: ids).
- blockout_ctx: the signer has committed a signed attempt (fields: withdrawal id, tx hash).
- blockout_rsp: a withdrawal changed status on the signer's side (fields: withdrawal id, status).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import redis

log = logging.getLogger(__name__)

STREAMS = ("blockout_req", "blockout_ctx", "blockout_rsp")
STREAM_MAXLEN = 100_000  # approximate trim: the news is short-lived, the database keeps the rest
READ_BLOCK_MS = 1_000

Subscriber = Callable[[dict[str, str]], None]


class NewsBus:
    def __init__(self, client: redis.Redis | None, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._local: dict[str, list[Subscriber]] = {name: [] for name in STREAMS}
        self._stopping = threading.Event()
        self._readers: list[threading.Thread] = []

    def stream_key(self, stream: str) -> str:
        return f"{self._prefix}:{stream}"

    def publish(self, stream: str, fields: dict[str, str]) -> None:
        assert stream in STREAMS, stream
        if self._redis is None:
            for subscriber in list(self._local[stream]):
                subscriber(fields)
            return
        try:
            self._redis.xadd(self.stream_key(stream), fields, maxlen=STREAM_MAXLEN, approximate=True)
        except redis.RedisError:
            log.warning("news not published (Redis unavailable); the database still has it",
                        extra={"stream": stream})

    def subscribe(self, stream: str, subscriber: Subscriber) -> None:
        """New items only (the past is in the database). With Redis, a reader thread blocks on XREAD."""
        assert stream in STREAMS, stream
        if self._redis is None:
            self._local[stream].append(subscriber)
            return
        thread = threading.Thread(target=self._read, args=(stream, subscriber), name=f"news-{stream}", daemon=True)
        thread.start()
        self._readers.append(thread)

    def close(self) -> None:
        self._stopping.set()
        for thread in self._readers:
            thread.join(timeout=READ_BLOCK_MS / 1000 + 2)

    def _read(self, stream: str, subscriber: Subscriber) -> None:
        key, last = self.stream_key(stream), "$"
        while not self._stopping.is_set():
            try:
                batches = self._redis.xread({key: last}, count=500, block=READ_BLOCK_MS)
            except redis.RedisError:
                self._stopping.wait(1.0)  # Redis down: the subscriber's own tick covers the gap
                last = "$"
                continue
            for _, items in batches or ():
                for item_id, fields in items:
                    last = item_id
                    try:
                        subscriber({k.decode(): v.decode() for k, v in fields.items()})
                    except Exception:  # noqa: BLE001 - a subscriber's fault must not stop the reader
                        log.exception("news subscriber failed", extra={"stream": stream})
