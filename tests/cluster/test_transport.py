"""actors/transport.py against the real Redis and a real shard (MariaDB): asks and replies through the
streams, a duplicated entry applied once, an expired request applied but not answered, an abandoned entry
claimed by a new host, and a batch of entries that becomes one group commit."""

from __future__ import annotations

import threading

import redis

from actors.transport import GROUP, HandedLock, StreamClient, StreamHost, StreamNames, now_ms
from core import messages as m
from core import wire
from core.errors import InsufficientFunds, Unavailable
import pytest

from tests.conftest import REDIS_URL, make_config
from tests.helpers import fund, register, start_system, wait_until


@pytest.fixture
def cluster_bits(mysql_url, redis_prefix):
    system = start_system(make_config(mysql_url, redis_prefix, shards=2), pool=10)
    client = redis.Redis.from_url(REDIS_URL)
    names = StreamNames(redis_prefix)
    hosts: list[StreamHost] = []
    callers: list[StreamClient] = []

    def host(shard: int = 0, consumer: str = "host-a", **options) -> StreamHost:
        started = StreamHost(client, names, f"shard-{shard}", lambda: system.router.shard_ref(shard), consumer,
                             batch_max=100, **options).start()
        hosts.append(started)
        return started

    def caller(process: str = "gate-1") -> StreamClient:
        started = StreamClient(client, names, process).start()
        callers.append(started)
        return started

    try:
        yield system, client, names, host, caller
    finally:
        for item in hosts + callers:
            item.stop()
        system.stop()
        client.close()


def _two_accounts_on_shard_0(system):
    accounts = [register(system, f"user{i}") for i in range(4)]
    on_zero = [a for a in accounts if a.shard == 0]
    assert len(on_zero) >= 2, "the allocator fills the emptiest shard: two of four land on shard 0"
    return on_zero[0], on_zero[1]


def test_ask_through_the_stream_moves_money_and_errors_cross(cluster_bits):
    system, _, _, host, caller = cluster_bits
    alice, bob = _two_accounts_on_shard_0(system)
    fund(system, alice.account_id, 1000)
    host()
    gate = caller()
    result = gate.ask("shard-0", m.Transfer("t-1", alice.account_id, bob.account_id, 0, "ETH", 300), 5.0)
    assert result == m.OpResult("t-1", "completed")
    balances = gate.ask("shard-0", m.GetBalances(bob.account_id), 5.0)
    assert balances.of("ETH") == (300, 0)
    with pytest.raises(InsufficientFunds):
        gate.ask("shard-0", m.Transfer("t-2", alice.account_id, bob.account_id, 0, "ETH", 10**30), 5.0)
    assert system.router.balances(alice.account_id)["ETH"] == (700, 0)


def test_a_handed_lock_is_released_by_the_host_with_an_ok_answer_only(cluster_bits):
    """The front's in-flight mark handed over with an ask: gone when the ok answer is read; still held after a
    refusal (the front records it, then releases); another holder's lock (same key, other token) untouched."""
    system, client, names, host, caller = cluster_bits
    alice, bob = _two_accounts_on_shard_0(system)
    fund(system, alice.account_id, 1000)
    host()
    gate = caller()

    def held(op_id: str, token: str) -> HandedLock:
        lock = HandedLock(f"{names.prefix}:inflight:{op_id}", token)
        client.set(lock.key, token, px=60_000)
        return lock

    applied = held("t-1", "token-1")
    assert gate.ask("shard-0", m.Transfer("t-1", alice.account_id, bob.account_id, 0, "ETH", 300), 5.0,
                    applied) == m.OpResult("t-1", "completed")
    assert applied.released and client.get(applied.key) is None
    refused = held("t-2", "token-2")
    with pytest.raises(InsufficientFunds):
        gate.ask("shard-0", m.Transfer("t-2", alice.account_id, bob.account_id, 0, "ETH", 10**30), 5.0, refused)
    assert not refused.released and client.get(refused.key) == b"token-2"
    taken = held("t-3", "someone-else")
    gate.ask("shard-0", m.Transfer("t-3", alice.account_id, bob.account_id, 0, "ETH", 1), 5.0,
             HandedLock(taken.key, "expired-token"))
    assert client.get(taken.key) == b"someone-else"
    other = f"{names.prefix}:session:x"  # a key that is no in-flight mark: never deleted by a host
    client.set(other, "token-4", px=60_000)
    stray = HandedLock(other, "token-4")
    assert gate.ask("shard-0", m.Transfer("t-4", alice.account_id, bob.account_id, 0, "ETH", 1), 5.0,
                    stray) == m.OpResult("t-4", "completed")
    assert not stray.released and client.get(other) == b"token-4"
    assert system.router.balances(alice.account_id)["ETH"] == (698, 0)


def test_duplicated_entry_is_applied_once_and_answered_as_replay(cluster_bits):
    system, client, names, host, caller = cluster_bits
    alice, bob = _two_accounts_on_shard_0(system)
    fund(system, alice.account_id, 1000)
    gate = caller()
    fields = {"m": wire.encode(m.Transfer("dup-1", alice.account_id, bob.account_id, 0, "ETH", 250)),
              "c": "corr-dup", "r": gate.reply_stream, "d": str(now_ms() + 30_000)}
    client.xadd(names.inbox("shard-0"), fields)
    client.xadd(names.inbox("shard-0"), fields)  # the same request twice (a producer's retry)
    host()
    replies = wait_until(lambda: [e for _, e in client.xrange(gate.reply_stream)] if client.exists(
        gate.reply_stream) and client.xlen(gate.reply_stream) >= 2 else None, timeout_s=10)
    results = [wire.decode(r[b"v"]) for r in replies]
    assert [r.replayed for r in results] == [False, True] and {r.op_id for r in results} == {"dup-1"}
    assert system.router.balances(alice.account_id)["ETH"] == (750, 0)
    assert system.router.balances(bob.account_id)["ETH"] == (250, 0)


def test_expired_request_is_applied_not_answered(cluster_bits):
    system, client, names, host, caller = cluster_bits
    alice, bob = _two_accounts_on_shard_0(system)
    fund(system, alice.account_id, 1000)
    gate = caller()
    mark = f"{names.prefix}:inflight:late-1"
    client.set(mark, "token-late", px=60_000)
    stale = {"m": wire.encode(m.Transfer("late-1", alice.account_id, bob.account_id, 0, "ETH", 40)),
             "c": "corr-late", "r": gate.reply_stream, "d": str(now_ms() - 1), "lk": mark, "lt": "token-late"}
    client.xadd(names.inbox("shard-0"), stale)
    served = host()
    wait_until(lambda: served.expired == 1, timeout_s=10)
    assert system.router.balances(bob.account_id)["ETH"] == (40, 0)
    assert not client.exists(gate.reply_stream), "an expired request gets no answer"
    assert client.get(mark) == b"token-late", "nor releases the lock it came with (its caller answered 503)"
    assert client.xpending(names.inbox("shard-0"), GROUP)["pending"] == 0


def test_no_host_means_timeout_unavailable(cluster_bits):
    _, _, _, _, caller = cluster_bits
    with pytest.raises(Unavailable, match="did not answer in time"):
        caller().ask("shard-1", m.Ping(), 0.3)


def test_new_host_claims_what_a_dead_one_left_pending(cluster_bits):
    system, client, names, host, caller = cluster_bits
    alice, bob = _two_accounts_on_shard_0(system)
    fund(system, alice.account_id, 1000)
    stream = names.inbox("shard-0")
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for i in range(3):
        client.xadd(stream, {"m": wire.encode(m.Transfer(f"orphan-{i}", alice.account_id, bob.account_id, 0,
                                                         "ETH", 10)), "c": ""})
    # a host read them and died before its commit and XACK
    assert len(client.xreadgroup(GROUP, "dead-host", {stream: ">"}, count=10)[0][1]) == 3
    host(consumer="host-b", claim_idle_ms=0)
    wait_until(lambda: client.xpending(stream, GROUP)["pending"] == 0, timeout_s=10)
    assert system.router.balances(bob.account_id)["ETH"] == (30, 0)
    assert system.router.balances(alice.account_id)["ETH"] == (970, 0)


def test_a_drained_batch_is_one_group_commit(cluster_bits):
    system, client, names, host, caller = cluster_bits
    alice, bob = _two_accounts_on_shard_0(system)
    fund(system, alice.account_id, 10_000)
    gate = caller()
    before = system.router.ask_shard(0, m.GetStats()).batches
    for i in range(50):
        client.xadd(names.inbox("shard-0"), {
            "m": wire.encode(m.Transfer(f"b-{i}", alice.account_id, bob.account_id, 0, "ETH", 1)),
            "c": f"c-{i}", "r": gate.reply_stream, "d": str(now_ms() + 30_000)})
    served = host()
    wait_until(lambda: served.entries == 50, timeout_s=10)
    stats = system.router.ask_shard(0, m.GetStats())
    assert stats.batches - before <= 3, "50 entries read in one XREADGROUP should commit in very few batches"
    assert system.router.balances(bob.account_id)["ETH"] == (50, 0)


def test_an_answer_that_comes_back_before_the_reply_reader_reads_is_not_lost(cluster_bits):
    """The reader starts at the beginning of the process's own reply stream: an ask sent and answered before its
    first XREAD (here: before the client is even started) still gets its answer."""
    system, client, names, host, caller = cluster_bits
    host()
    early = StreamClient(client, names, "gate-early")
    answers: list = []
    asking = threading.Thread(target=lambda: answers.append(early.ask("shard-0", m.Ping(), 10.0)))
    asking.start()
    try:
        wait_until(lambda: client.xlen(names.reply("gate-early")) == 1, timeout_s=10, what="the host answered")
        early.start()
        asking.join(timeout=15)
        assert answers == [m.Pong("shard-0")]
    finally:
        early.stop()
        asking.join(timeout=15)
