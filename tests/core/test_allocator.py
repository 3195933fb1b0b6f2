"""Message injection into the Allocator of a running system: placement on the live shard with the fewest
accounts, the pool running low and running out, refilling it, and the account -> shard binding cached in
Redis and recoverable from the database."""

from __future__ import annotations

import dataclasses

import pytest
import redis
from coincurve import PrivateKey
from cryptography.exceptions import InvalidTag
from eth_utils import is_checksum_address

from core import messages as m
from storage.models import Account, PoolKey
from storage.pool import sealed_pool_key
from tests.conftest import MASTER_KEY, REDIS_URL, make_config
from actors.directory import Directory
from core.keys import KeyRing, address_of
from core.errors import PoolEmpty, UnknownAccount
from app.system import ActorSystem

from tests.helpers import register


def shards_of(registrations: list[m.Registered]) -> list[int]:
    return [r.shard for r in registrations]


def test_accounts_go_to_the_live_shard_with_fewest_accounts(systems):
    system = systems(shards=2)
    assert shards_of([register(system, f"early{i}") for i in range(5)]) == [0, 1, 0, 1, 0]
    system.stop()
    system = systems(pool=0, shards=4)  # two shards added: they fill first
    assert shards_of([register(system, f"late{i}") for i in range(7)]) == [2, 3, 2, 3, 1, 2, 3]
    counts: dict[int, int] = {}
    for (shard,) in Account.select(Account.shard).where(Account.kind == "user").tuples():
        counts[shard] = counts.get(shard, 0) + 1
    assert counts == {0: 3, 1: 3, 2: 3, 3: 3}


def test_each_account_gets_its_own_encrypted_pool_key_for_life(systems):
    system = systems(pool=3)
    people = [register(system, n) for n in ("alice", "bob", "carol")]
    assert len({p.deposit_address for p in people}) == 3
    ring = KeyRing.single(MASTER_KEY)
    for person in people:
        assert is_checksum_address(person.deposit_address)
        key = PoolKey.get(PoolKey.address == person.deposit_address)
        assert key.account_id == person.account_id and key.assigned_at is not None
        assert Account.get_by_id(person.account_id).shard == person.shard
        sealed = sealed_pool_key(key)  # an envelope: the key under its data key, that under the master key
        assert not sealed.is_legacy and sealed.master_version == 1
        secret = ring.open(sealed)
        assert address_of(PrivateKey(secret)) == person.deposit_address
        assert secret not in bytes(key.encrypted_key) and secret not in bytes(key.wrapped_data_key)
    other = sealed_pool_key(PoolKey.get(PoolKey.address == people[1].deposit_address))
    with pytest.raises(InvalidTag):  # the address is bound in: an envelope moved to another row is refused
        ring.open(dataclasses.replace(other, address=people[0].deposit_address))


def test_an_empty_pool_is_a_clear_error_and_a_refill_ends_it(systems):
    system = systems(pool=2)
    register(system, "alice"), register(system, "bob")
    accounts_before = Account.select().count()
    with pytest.raises(PoolEmpty) as caught:
        register(system, "carol")
    assert caught.value.code == "address_pool_empty" and caught.value.status == 503
    assert "pool generate" in caught.value.detail
    assert Account.select().count() == accounts_before
    status = system.router.ask_actor("allocator", m.RefillPool(3), timeout=60)
    assert status == m.PoolStatusReply(total=5, assigned=2, remaining=3, low=True)
    assert register(system, "carol").deposit_address
    assert PoolKey.select().where(PoolKey.account_id.is_null()).count() == 2


def test_pool_status_says_when_the_pool_runs_low(systems, caplog):
    system = systems(pool=6, pool_low_watermark=5)
    status = lambda: system.router.ask_actor("allocator", m.PoolStatus())  # noqa: E731
    assert status() == m.PoolStatusReply(total=6, assigned=0, remaining=6, low=False)
    register(system, "alice")
    assert status().low is False  # 5 left: not below the watermark
    assert "address pool is running low" not in caplog.text
    register(system, "bob")
    assert status() == m.PoolStatusReply(total=6, assigned=2, remaining=4, low=True)
    assert "address pool is running low" in caplog.text  # the operator's log says so too
    refilled = system.router.ask_actor("allocator", m.RefillPool(10), timeout=60)
    assert refilled == m.PoolStatusReply(total=16, assigned=2, remaining=14, low=False)
    assert status() == refilled


def test_binding_is_cached_in_redis_and_recovered_from_the_database(systems):
    system = systems()
    alice, bob = register(system, "alice"), register(system, "bob")
    client = redis.Redis.from_url(REDIS_URL)
    prefix = systems.redis_prefix
    try:
        assert client.hget(f"{prefix}:account_shard", str(bob.account_id)) == str(bob.shard).encode()
        assert client.hget(f"{prefix}:username", "bob") == f"{bob.account_id}:{bob.shard}".encode()
        from_redis = Directory(client, prefix)  # a new front process: empty memory, warm Redis
        assert from_redis.shard_of(alice.account_id) == alice.shard
        assert from_redis.lookup("bob") == (bob.account_id, bob.shard)

        client.delete(f"{prefix}:account_shard", f"{prefix}:username")  # Redis lost its data
        recovered = Directory(client, prefix)
        assert recovered.shard_of(bob.account_id) == bob.shard
        assert recovered.lookup("alice") == (alice.account_id, alice.shard)
        assert client.hget(f"{prefix}:account_shard", str(bob.account_id)) == str(bob.shard).encode()
        assert client.hget(f"{prefix}:username", "alice") == f"{alice.account_id}:{alice.shard}".encode()
        with pytest.raises(UnknownAccount):
            recovered.shard_of(10**9)
        with pytest.raises(UnknownAccount):
            recovered.lookup("nobody")
        system_account = Account.get(Account.kind == "system")
        with pytest.raises(UnknownAccount):  # system accounts are not user-addressable
            recovered.shard_of(system_account.id)
    finally:
        client.close()


def test_accounts_on_a_removed_shard_refuse_to_start(systems, caplog):
    system = systems(shards=4)
    people = [register(system, f"user{i}") for i in range(4)]
    assert shards_of(people) == [0, 1, 2, 3]
    system.stop()
    shrunk = ActorSystem(make_config(systems.url, systems.redis_prefix, shards=2))
    with pytest.raises(RuntimeError, match="allocator failed to start"):
        shrunk.start()
    reasons = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert any("2 accounts are bound to shards >= WALLET_SHARDS=2" in reason for reason in reasons), reasons
    assert shards_of(people) == [a.shard for a in Account.select().where(Account.kind == "user").order_by(Account.id)]
    system = systems(pool=0, shards=4)  # with the shards back, it starts and serves them
    assert system.router.balances(people[3].account_id)["ETH"] == (0, 0)
