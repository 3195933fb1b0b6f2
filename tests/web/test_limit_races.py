"""Issue 9, finding 3: the limits count first, so concurrency cannot slip past them.

Before the fix the counter was read before the password check and increased after it: 60 concurrent wrong
logins for one account all reached argon2 (limit 5), and so did 60 wrong pay passwords; 41 of 60 concurrent
registrations passed (limit 20). Now each attempt is added atomically (Redis MULTI with INCR, or in-process
under a lock) and refused when over the limit, before any password is checked: of 100 concurrent attempts
exactly the limit reach the check. Both shapes: Redis and in-process (SQLite). And what is admitted hashes a bounded number at once (HashSlots),
so a burst of logins for many accounts from many addresses cannot take every view thread.
"""

from __future__ import annotations

import collections
import threading

from storage.models import Account
from tests.helpers import wait_until
from tests.web.conftest import PASSWORD, PAY_PASSWORD

ATTEMPTS = 100


def concurrently(api, request) -> collections.Counter:
    """`request(client, n)` for n in 0..ATTEMPTS-1, each on its own thread and test client, released at once."""
    barrier = threading.Barrier(ATTEMPTS, timeout=30)
    statuses: list[int] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        client = api.app.test_client()
        barrier.wait()
        status = request(client, n).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(ATTEMPTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(statuses) == ATTEMPTS, "a request did not finish"
    return collections.Counter(statuses)


def test_concurrent_wrong_logins_reach_the_password_check_at_most_the_limit(any_api):
    any_api.user("alice", login=False)
    limit = any_api.front.limits.login_account.max_failures
    statuses = concurrently(any_api, lambda client, n: client.post(
        "/api/v1/sessions", json={"username": "alice", "password": f"guess-{n}"},
        environ_base={"REMOTE_ADDR": f"10.7.{n // 250}.{n % 250}"}))  # one address each: the account limit
    assert statuses == {401: limit, 429: ATTEMPTS - limit}


def test_concurrent_wrong_pay_passwords_are_checked_at_most_the_limit(any_api):
    alice = any_api.user("alice", funds=1_000)
    any_api.user("bob", login=False)
    limit = any_api.front.limits.pay_account.max_failures
    statuses = concurrently(any_api, lambda client, n: client.post(
        "/api/v1/transfers", headers={**alice.auth, "Idempotency-Key": f"race-{n}"},
        json={"to_username": "bob", "asset": "ETH", "amount": "1", "pay_password": f"wrong-{n}"},
        environ_base={"REMOTE_ADDR": f"10.8.{n // 250}.{n % 250}"}))
    assert statuses == {403: limit, 429: ATTEMPTS - limit}
    assert any_api.balance(alice) == (1_000, 0)


def test_concurrent_registrations_from_one_address_pass_at_most_the_limit(any_api):
    limit = any_api.front.limits.register_ip.max_failures
    accounts = Account.select().count()
    statuses = concurrently(any_api, lambda client, n: client.post(
        "/api/v1/accounts", json={"username": f"new-{n}", "password": PASSWORD, "pay_password": PAY_PASSWORD},
        environ_base={"REMOTE_ADDR": "10.9.0.1"}))
    assert statuses == {201: limit, 429: ATTEMPTS - limit}
    assert Account.select().count() == accounts + limit


def test_password_hashing_runs_a_bounded_number_at_once_and_refuses_beyond_its_queue():
    import pytest

    from core.errors import Unavailable
    from web.security import HashSlots

    slots = HashSlots(running=2, waiting=1, wait_s=30)
    inside, release = threading.Barrier(3, timeout=30), threading.Event()

    def hold() -> None:
        with slots.slot():
            inside.wait()
            release.wait(timeout=30)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for thread in holders:
        thread.start()
    inside.wait()  # both slots taken
    queued_done = threading.Event()

    def queued_check() -> None:
        with slots.slot():
            queued_done.set()

    queued = threading.Thread(target=queued_check)
    queued.start()
    wait_until(lambda: slots.waiting == 1, timeout_s=10, what="one check queued")
    with pytest.raises(Unavailable):  # the queue is full: refused at once, no thread waits
        with slots.slot():
            pass
    release.set()
    assert queued_done.wait(timeout=30)
    for thread in holders + [queued]:
        thread.join(timeout=30)
    assert slots.peak_running == 2


def test_a_burst_of_admitted_logins_never_runs_more_hashes_than_the_bound(api):
    from core.limits import HASH_RUNNING_MAX
    from web.security import HASH_SLOTS

    for n in range(ATTEMPTS // 4):
        api.user(f"user-{n}", login=False)
    HASH_SLOTS.peak_running = 0
    statuses = concurrently(api, lambda client, n: client.post(  # every one admitted: its own name and address
        "/api/v1/sessions", json={"username": f"user-{n % (ATTEMPTS // 4)}", "password": f"guess-{n}"},
        environ_base={"REMOTE_ADDR": f"10.6.{n // 250}.{n % 250}"}))
    assert set(statuses) <= {401, 429, 503} and statuses[401] >= HASH_RUNNING_MAX
    assert HASH_SLOTS.peak_running <= HASH_RUNNING_MAX
