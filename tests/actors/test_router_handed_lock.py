"""actors/router.py: an ask that carries a handed-over lock waits no longer than the lock lives (so the
caller never acts on an answer while another request may hold the same Idempotency-Key); a local shard
leaves the lock to the caller."""

from __future__ import annotations

import time

from actors.router import Router
from actors.transport import HandedLock


class RecordingRemote:
    def __init__(self) -> None:
        self.asks: list[tuple[str, float, HandedLock | None]] = []

    def ask(self, target, message, timeout_s, lock=None):  # noqa: ANN001, ANN201 - StreamClient.ask's shape
        self.asks.append((target, timeout_s, lock))
        return "answer"


def _router() -> tuple[Router, RecordingRemote]:
    router = Router(directory=None, shard_count=2, ask_timeout_s=5.0)
    router.remote = RecordingRemote()
    return router, router.remote


def test_the_ask_timeout_is_cut_to_what_the_lock_has_left():
    router, remote = _router()
    lock = HandedLock("p:inflight:t", "token", answer_by=time.monotonic() + 0.5)
    assert router.ask_shard(1, "message", lock=lock) == "answer"
    target, timeout_s, handed = remote.asks[0]
    assert target == "shard-1" and handed is lock and 0.4 < timeout_s <= 0.5


def test_a_lapsed_lock_leaves_no_time_and_no_lock_keeps_the_timeout():
    router, remote = _router()
    router.ask_shard(0, "message", lock=HandedLock("k", "t", answer_by=time.monotonic() - 1))
    router.ask_shard(0, "message", timeout=2.0)
    assert [timeout_s for _, timeout_s, _ in remote.asks] == [0.0, 2.0]
