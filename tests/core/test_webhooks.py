"""Webhook delivery (storage/webhooks.py Dispatcher) to a real local HTTP receiver, with a clock the test moves:
signed bodies, every event exactly once after de-duplication, in order per account, a failing account blocking
only itself, backoff, abandonment after the retry window, the delivery log, and the Redis stream."""

from __future__ import annotations

import collections
import http.server
import json
import threading

import pytest
import redis
import requests

from core.keys import KeyRing
from core.limits import WEBHOOK_BACKOFF_FIRST_MS, WEBHOOK_RETRY_FOR_MS
from storage.events import Event, record_event
from storage.webhooks import (
    ABANDONED, DELIVERED, SIGNATURE_HEADER, Dispatcher, WebhookDelivery, add_endpoint, attempts_of, backoff_ms,
    delivery_log, list_endpoints, redis_publisher, sign, verify_signature,
)
from tests.conftest import MASTER_KEY, REDIS_URL
from tests.helpers import FakeClock

START_MS = 1_800_000_000_000
RING = KeyRing.single(MASTER_KEY)


class Receiver:
    """A local HTTP server: answers 500 to the accounts in `failing` (or to everything while `down`), records
    every request it answered 2xx."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.down = False
        self.failing: set[int] = set()
        self.received: list[dict] = []  # bodies answered 2xx, in arrival order
        self.requests = 0
        self.bad_signatures = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event = json.loads(body)
                receiver.requests += 1
                if receiver.secret and not verify_signature(self.headers[SIGNATURE_HEADER], body, receiver.secret,
                                                            int(self.headers[SIGNATURE_HEADER][2:12])):
                    receiver.bad_signatures += 1
                ok = not receiver.down and event["account_id"] not in receiver.failing
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if ok:
                    receiver.received.append(event)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    return requests.post(url, data=body, headers=headers, timeout=timeout_s).status_code


def record(db, kind: str, account: int | None, at_ms: int | None = None, **data) -> str:
    with db.atomic():
        return record_event(kind, account, data, at_ms=at_ms if at_ms is not None else START_MS)


def drain(dispatcher: Dispatcher, rounds: int = 20) -> None:
    for _ in range(rounds):
        report = dispatcher.run_once()
        if not report.attempted and not report.fanned_out:
            return


def test_an_event_is_recorded_only_inside_a_transaction(migrated_db):
    with pytest.raises(AssertionError):
        record_event("deposit.seen", 1, {})


def test_signed_events_arrive_once_in_order_per_account_across_a_failing_receiver(migrated_db, receiver):
    db = migrated_db
    clock = FakeClock(START_MS)
    _, secret = add_endpoint(receiver.url, RING)
    receiver.secret = secret
    dispatcher = Dispatcher(db, post, clock_ms=clock, ring=RING)
    try:
        sent = collections.defaultdict(list)
        for n in range(6):
            for account in (1, 2, 3):
                sent[account].append(record(db, "deposit.seen", account, n=n))
        receiver.failing = {2}  # account 2's receiver side is broken for a while
        drain(dispatcher)
        got = collections.defaultdict(list)
        for event in receiver.received:
            got[event["account_id"]].append(event["id"])
        assert got[1] == sent[1] and got[3] == sent[3] and got[2] == []
        head = WebhookDelivery.get(WebhookDelivery.account_id == 2, WebhookDelivery.attempts > 0)
        assert WebhookDelivery.select().where((WebhookDelivery.account_id == 2)
                                              & (WebhookDelivery.attempts > 0)).count() == 1  # only the head tried
        assert head.next_attempt_at == START_MS + WEBHOOK_BACKOFF_FIRST_MS

        receiver.down = True  # and then the whole receiver, while new events come
        for n in range(6, 8):
            sent[1].append(record(db, "deposit.confirmed", 1, n=n))
        for _ in range(4):
            clock.advance(backoff_ms(10))
            drain(dispatcher)
        receiver.down, receiver.failing = False, set()
        clock.advance(backoff_ms(10))
        drain(dispatcher)
        got = collections.defaultdict(list)
        for event in receiver.received:
            got[event["account_id"]].append(event["id"])
        assert dict(got) == dict(sent)  # every event, once, in the order recorded, per account
        assert receiver.bad_signatures == 0
        assert WebhookDelivery.select().where(WebhookDelivery.status != DELIVERED).count() == 0
        assert len(attempts_of(head.id)) > 1 and attempts_of(head.id)[-1].status_code == 200
        log = delivery_log(limit=100)
        assert len(log) == 20 and {d.status for d in log} == {DELIVERED}
        [endpoint] = list_endpoints()
        assert (endpoint.delivered, endpoint.pending) == (20, 0)
    finally:
        dispatcher.close()


def test_a_delivery_is_abandoned_after_the_retry_window_and_the_account_goes_on(migrated_db, receiver):
    db = migrated_db
    clock = FakeClock(START_MS)
    add_endpoint(receiver.url, RING)
    dispatcher = Dispatcher(db, post, clock_ms=clock, ring=RING)
    try:
        first = record(db, "deposit.seen", 7, n=1)
        receiver.down = True
        waited = 0
        while waited < WEBHOOK_RETRY_FOR_MS:  # backoff doubles up to an hour: about 90 attempts in three days
            drain(dispatcher)
            step = backoff_ms(WebhookDelivery.get().attempts)
            clock.advance(step)
            waited += step
        drain(dispatcher)  # the attempt past the window abandons it
        assert WebhookDelivery.get().status == ABANDONED
        assert WebhookDelivery.get().attempts >= 24  # retried for at least a day
        second = record(db, "deposit.confirmed", 7, n=2, at_ms=clock())
        receiver.down = False
        drain(dispatcher)
        statuses = {d.event_id: d.status for d in delivery_log()}
        assert statuses == {first: ABANDONED, second: DELIVERED}
        assert [e["id"] for e in receiver.received] == [second]
    finally:
        dispatcher.close()


def test_events_go_to_the_redis_stream_once(migrated_db, redis_prefix):
    db = migrated_db
    client = redis.Redis.from_url(REDIS_URL)
    stream = f"{redis_prefix}:events"
    dispatcher = Dispatcher(db, post, publish=redis_publisher(client, stream))
    try:
        ids = [record(db, "deposit.seen", 5, n=n) for n in range(3)]
        dispatcher.run_once()
        dispatcher.run_once()
        entries = client.xrange(stream)
        assert [e[1][b"id"].decode() for e in entries] == ids
        assert json.loads(entries[0][1][b"data"]) == {"n": 0}
        assert Event.select().where(Event.published_at.is_null()).count() == 0
    finally:
        dispatcher.close()
        client.close()


def test_the_signature_is_stripe_like_and_checked_against_the_clock():
    body = b'{"id":"evt_1"}'
    header = sign("whsec_x", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=") and len(header.rpartition("=")[2]) == 64
    assert verify_signature(header, body, "whsec_x", 1_700_000_100)
    assert not verify_signature(header, body + b" ", "whsec_x", 1_700_000_100)
    assert not verify_signature(header, body, "whsec_y", 1_700_000_100)
    assert not verify_signature(header, body, "whsec_x", 1_700_001_000)  # too old: a replay
    assert not verify_signature("garbage", body, "whsec_x", 1_700_000_000)
