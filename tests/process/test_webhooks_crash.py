"""Webhooks across a receiver that fails for a while and SIGKILLs of `wallet serve`: a local receiver verifies
every signature and, after de-duplication by event id, sees every event exactly once, in order per account.

The events are recorded by this test process into the service's database (each in its own transaction, as a
state change would), while the service runs and is killed: the outbox is the database, whoever wrote it."""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time

import pytest

from core.ports import free_port
from storage.db import connect_database
from storage.events import record_event
from storage.webhooks import SIGNATURE_HEADER, add_endpoint, delivery_log, verify_signature
from tests.conftest import make_config
from tests.helpers import wait_until
from tests.process.support import ServeProcess, prepare, wallet_env

ACCOUNTS = (11, 12, 13)
EVENTS_PER_ACCOUNT = 40


class Receiver:
    def __init__(self) -> None:
        self.secret = ""
        self.fail_next = 0  # this many requests are answered 503 (a count, not a time: the load cannot skip it)
        self.arrivals: list[tuple[int, str]] = []  # (account, event id) of each 2xx answer, duplicates included
        self.bad_signatures = 0
        self.failures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                header = self.headers.get(SIGNATURE_HEADER, "")
                with receiver.lock:
                    if not verify_signature(header, body, receiver.secret, int(time.time())):
                        receiver.bad_signatures += 1
                    ok = receiver.fail_next <= 0
                    receiver.fail_next -= 1
                    if ok:
                        event = json.loads(body)
                        receiver.arrivals.append((event["account_id"], event["id"]))
                    else:
                        receiver.failures += 1
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first_seen(self) -> dict[int, list[str]]:
        seen, by_account = set(), collections.defaultdict(list)
        with self.lock:
            for account, event_id in self.arrivals:
                if event_id not in seen:
                    seen.add(event_id)
                    by_account[account].append(event_id)
        return dict(by_account)


@pytest.mark.slow
def test_every_event_once_in_order_across_a_failing_receiver_and_sigkills(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    prepare(config, {})
    receiver = Receiver()
    db = connect_database(mysql_url)
    _, receiver.secret = add_endpoint(receiver.url, config.key_ring())
    recorded: dict[int, list[str]] = collections.defaultdict(list)

    def write_events(start: int, stop: int) -> None:
        for n in range(start, stop):
            for account in ACCOUNTS:
                with db.atomic():
                    recorded[account].append(record_event("withdrawal.test", account, {"n": n}))
            time.sleep(0.01)

    server = ServeProcess(wallet_env(config, free_port()), tmp_path / "serve.log")
    try:
        receiver.fail_next = 6  # the receiver is down at first
        server.start()
        write_events(0, 10)
        wait_until(lambda: receiver.failures > 0 and receiver.first_seen(), timeout_s=30,
                   what="failures, then the first deliveries",
                   detail=lambda: f"deliveries: {delivery_log(3)}\n" + server.log_tail())
        writer = threading.Thread(target=write_events, args=(10, EVENTS_PER_ACCOUNT))
        writer.start()
        for _ in range(2):  # killed while deliveries are in flight
            wait_until(lambda: len(receiver.arrivals) >= 10, timeout_s=30, what="deliveries flowing")
            server.kill()
            server.start()
        writer.join()
        expected = {account: recorded[account] for account in ACCOUNTS}
        wait_until(lambda: receiver.first_seen() == expected, timeout_s=60, interval_s=0.1,
                   what="every event delivered", detail=lambda: f"{ {a: len(v) for a, v in receiver.first_seen().items()} }"
                                                               + "\n" + server.log_tail())
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.ensure_stopped()
        receiver.server.shutdown()
    assert receiver.bad_signatures == 0
    assert receiver.failures > 0
    assert receiver.first_seen() == expected  # every event, in the order recorded per account, once after dedupe
