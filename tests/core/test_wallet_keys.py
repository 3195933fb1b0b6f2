"""The service's own keys (storage/walletkeys.py) and master key rotation (storage/rotation.py) on MariaDB and
SQLite: provisioning creates the hot and gas wallets once; a rotation re-wraps every data key without touching
a ciphertext, converts legacy pool rows, is idempotent, changes nothing when a version is missing, and runs
while the allocator hands out pool keys."""

from __future__ import annotations

import threading

import pytest
from coincurve import PrivateKey

from app.provision import provision
from core.errors import ConfigError
from core.keys import KeyRing, address_of, generate_encrypted
from storage import sql
from storage.db import connect_database, migrate
from storage.models import PoolKey, WalletKey, now_ms
from storage.pool import generate_pool, load_pool_sealed, sealed_pool_key
from storage.rotation import key_versions, rotate_keys
from storage.walletkeys import ensure_wallet_keys, load_sealed, wallet_address, wallet_addresses
from tests.conftest import make_config
from tests.helpers import register, start_system

K1, K2, K3 = (bytes([n]) * 32 for n in (0x41, 0x42, 0x43))
RING1 = KeyRing.single(K1)
RING2 = KeyRing({1: K1, 2: K2})


def pool_snapshot() -> dict[str, tuple[bytes, bytes | None, int]]:
    return {row.address: (bytes(row.encrypted_key), row.wrapped_data_key and bytes(row.wrapped_data_key),
                          row.key_version) for row in PoolKey.select()}


def insert_legacy_keys(db, ring: KeyRing, count: int) -> list[str]:
    """Pool rows as written before envelopes: the key encrypted directly under the master key."""
    keys = [generate_encrypted(ring) for _ in range(count)]
    with db.atomic():
        sql.insert_many(db, "pool_key", ("address", "encrypted_key", "key_version", "created_at"),
                        [(k.address, k.ciphertext, k.key_version, now_ms()) for k in keys])
    return [k.address for k in keys]


def opens_to_its_address(ring: KeyRing, sealed) -> bool:
    return address_of(PrivateKey(ring.open(sealed))) == sealed.address


def test_provisioning_creates_the_hot_and_gas_wallets_once(migrated_db):
    first = provision(migrated_db, 2, 3, RING1)
    assert set(first.wallet_keys) == {"hot", "gas"} and first.wallet_keys["hot"] != first.wallet_keys["gas"]
    assert provision(migrated_db, 2, 3, RING1).wallet_keys == first.wallet_keys  # idempotent
    assert ensure_wallet_keys(migrated_db, RING1) == first.wallet_keys == wallet_addresses()
    assert WalletKey.select().count() == 2
    for purpose in ("hot", "gas"):
        sealed = load_sealed(purpose)
        assert sealed.address == wallet_address(purpose) == first.wallet_keys[purpose]
        assert sealed.purpose == purpose and sealed.master_version == 1 and opens_to_its_address(RING1, sealed)
    assert not set(first.wallet_keys.values()) & {row.address for row in PoolKey.select()}
    assert provision(migrated_db, 2, 0).wallet_keys == {}  # no ring: nothing created, nothing opened
    with pytest.raises(ValueError):
        load_sealed("cold")  # no key of the cold wallet is ever on the server


def test_a_wrong_master_key_is_refused_before_any_key_is_sealed_under_it(migrated_db):
    provision(migrated_db, 2, 2, RING1)
    before = pool_snapshot()
    with pytest.raises(ConfigError, match="hot wallet key .* does not open with master key version 1"):
        provision(migrated_db, 2, 10, KeyRing.single(K3))
    with pytest.raises(ConfigError, match="version 1 is not in the ring"):
        provision(migrated_db, 2, 10, KeyRing.single(K2, version=2))
    assert pool_snapshot() == before


def test_rotation_rewraps_every_data_key_keeps_ciphertexts_and_converts_legacy_rows(migrated_db):
    provision(migrated_db, 2, 5, RING1)
    legacy = insert_legacy_keys(migrated_db, RING1, 3)
    hot_before = load_sealed("hot")
    before = pool_snapshot()
    assert key_versions(RING2).pool == {1: 5, None: 3} and key_versions(RING2).pending == 10
    seen: list[int] = []
    report = rotate_keys(migrated_db, RING2, chunk=2, on_progress=seen.append)
    assert (report.master_version, report.pool_rewrapped, report.pool_converted, report.wallet_rewrapped,
            report.skipped) == (2, 5, 3, 2, 0)
    assert seen == [2, 2, 2, 2, 2]  # four chunks of pool rows, then the two wallet keys
    after = pool_snapshot()
    for address, (ciphertext, wrapped, version) in after.items():
        assert version == 2 and wrapped is not None
        if address in legacy:
            assert before[address][1] is None and ciphertext != before[address][0]
        else:
            assert ciphertext == before[address][0] and wrapped != before[address][1]
        sealed = load_pool_sealed(address)
        assert opens_to_its_address(RING2, sealed) and opens_to_its_address(KeyRing.single(K2, 2), sealed)
    hot = load_sealed("hot")
    assert hot.ciphertext == hot_before.ciphertext and hot.master_version == 2
    assert RING2.open(hot) == RING1.open(hot_before)
    assert key_versions(RING2).pending == 0
    again = rotate_keys(migrated_db, RING2)
    assert again.changed == 0 and again.skipped == 0 and pool_snapshot() == after  # idempotent


def test_rotation_without_the_retired_key_or_with_a_wrong_one_changes_nothing(migrated_db):
    provision(migrated_db, 2, 3, RING1)
    insert_legacy_keys(migrated_db, RING1, 1)
    before = pool_snapshot()
    with pytest.raises(ConfigError, match=r"versions \[1\] that the ring lacks"):
        rotate_keys(migrated_db, KeyRing.single(K2, version=2))
    with pytest.raises(ConfigError, match="version 1 does not open"):
        rotate_keys(migrated_db, KeyRing({1: K3, 2: K2}))
    assert pool_snapshot() == before and {row.master_version for row in WalletKey.select()} == {1}


def test_the_pool_is_sealed_under_the_current_version_of_a_rotated_ring(migrated_db):
    generate_pool(migrated_db, KeyRing({1: K1, 2: K2, 3: K3}), 4)
    assert {sealed_pool_key(row).master_version for row in PoolKey.select()} == {3}


def test_rotation_runs_online_while_accounts_take_pool_keys(mysql_url, redis_prefix):
    """A service already restarted with the new ring keeps registering accounts (the allocator assigns pool keys)
    while `rotate_keys` re-wraps the rows under it; every key ends under version 2 and opens."""
    config = make_config(mysql_url, redis_prefix, master_key=K2, master_key_version=2,
                         retired_master_keys=((1, K1),))
    db = connect_database(mysql_url)
    migrate(db)
    generate_pool(db, RING1, 600)
    system = start_system(config, pool=0)
    try:
        registered: list[str] = []
        errors: list[BaseException] = []
        rotated = threading.Event()
        first = threading.Event()

        def register_until_rotated() -> None:
            try:
                while not rotated.is_set() and len(registered) < 300:
                    registered.append(register(system, f"online{len(registered)}").deposit_address)
                    first.set()
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)
            first.set()

        worker = threading.Thread(target=register_until_rotated)
        worker.start()
        first.wait(30)
        report = rotate_keys(system.db, config.key_ring(), chunk=50)
        rotated.set()
        worker.join(60)
        assert not errors and len(set(registered)) == len(registered) >= 1
        assert report.pool_rewrapped == 600 and report.skipped == 0
        ring = config.key_ring()
        for row in PoolKey.select():
            assert row.key_version == 2 and opens_to_its_address(ring, sealed_pool_key(row))
        assert PoolKey.select().where(PoolKey.account_id.is_null(False)).count() == len(registered)
        assert register(system, "after").deposit_address
    finally:
        system.stop()
        db.close()


def test_a_row_changed_since_it_was_read_is_skipped_not_overwritten(migrated_db):
    """Two rotations at once: the one that updates second finds the version it read gone and leaves the row."""
    from storage.rotation import _update_pool_rows

    generate_pool(migrated_db, RING1, 3)
    stale = [(row.id, RING2.to_envelope(sealed_pool_key(row))) for row in PoolKey.select()]
    assert rotate_keys(migrated_db, RING2).pool_rewrapped == 3
    after = pool_snapshot()
    assert _update_pool_rows(migrated_db, stale, old_version=1, legacy=False) == 0
    assert pool_snapshot() == after
