"""The operator's command line (`wallet`), run with click's CliRunner and WALLET_* variables: init with a
pool, pool generate/status, and audit passing on a healthy ledger and failing, by name, on a corrupted one."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from storage.db import database_proxy
from tests.conftest import MASTER_KEY, make_config
from app.cli import main
from app.system import ActorSystem

from tests.core.support import undelivered_outbox, unique_op
from tests.helpers import fund, register, wait_until


@pytest.fixture
def wallet_cli(any_db_url):
    """Run `wallet ARGS` against the test database; the CLI's logging setup is undone afterwards."""
    env = {"WALLET_DATABASE_URL": any_db_url, "WALLET_MASTER_KEY": MASTER_KEY.hex(), "WALLET_SHARDS": "4",
           "WALLET_REDIS_URL": None, "WALLET_TOKENS": None}
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def run(*args: str, **env_overrides: str | None):
        try:
            return CliRunner().invoke(main, list(args), env={**env, **env_overrides}, catch_exceptions=False)
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
            db = database_proxy.obj
            if db is not None:  # a CLI process would exit here; the test process lives on
                db.close_all() if hasattr(db, "close_all") else db.close()

    run.url = any_db_url
    return run


def pool_status(wallet_cli) -> dict:
    result = wallet_cli("pool", "status")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_init_pool_generate_and_status(wallet_cli):
    result = wallet_cli("init", "--pool", "5")
    assert result.exit_code == 0, result.output
    assert "4 shards have system accounts" in result.stdout and "generated 5 deposit keys" in result.stdout
    again = wallet_cli("init", "--pool", "5")  # idempotent: the pool already has 5 unassigned keys
    assert again.exit_code == 0 and "generated" not in again.stdout
    assert pool_status(wallet_cli) == {"total": 5, "assigned": 0, "remaining": 5, "low": True}
    generated = wallet_cli("pool", "generate", "3")
    assert generated.exit_code == 0, generated.output
    assert "generated 3 keys" in generated.stdout
    assert "pool generate" in generated.stderr and "3/3" in generated.stderr  # the progress bar
    assert pool_status(wallet_cli) == {"total": 8, "assigned": 0, "remaining": 8, "low": True}


def test_pool_generate_needs_the_master_key(wallet_cli):
    result = wallet_cli("pool", "generate", "1", WALLET_MASTER_KEY=None)
    assert result.exit_code == 1 and "WALLET_MASTER_KEY is required" in result.output


def test_audit_passes_then_names_a_corrupted_balance(wallet_cli):
    assert wallet_cli("init", "--pool", "4").exit_code == 0
    system = ActorSystem(make_config(wallet_cli.url)).start()
    try:
        alice, bob = register(system, "alice"), register(system, "bob")
        fund(system, alice.account_id, 1000)
        system.router.transfer(unique_op("x"), alice.account_id, bob.account_id, "ETH", 300)
        wait_until(lambda: undelivered_outbox() == 0, what="credit delivered")
    finally:
        system.stop()
    assert pool_status(wallet_cli)["assigned"] == 2

    healthy = wallet_cli("audit")
    assert healthy.exit_code == 0, healthy.output
    summary = json.loads(healthy.stdout)
    assert summary["ok"] is True and summary["violations"] == 0 and summary["operations"] == 3

    db = system.db
    db.connect(reuse_if_open=True)
    db.execute_sql(f"UPDATE balance SET available = {db.param} WHERE account_id = {db.param} AND asset = 'ETH'",
                   ("701", alice.account_id))
    db.close()
    corrupted = wallet_cli("audit")
    assert corrupted.exit_code == 1
    assert f"VIOLATION: balance {alice.account_id}/ETH/a is 701 but its postings sum to 700" in corrupted.stderr
    assert "VIOLATION: balances of ETH sum to 1, not zero" in corrupted.stderr
    assert json.loads(corrupted.stdout)["ok"] is False


def test_init_prints_the_hot_and_gas_wallet_addresses_and_never_a_key(wallet_cli):
    from storage.models import WalletKey

    result = wallet_cli("init", "--pool", "2")
    assert result.exit_code == 0, result.output
    wallets = {row.purpose: row for row in WalletKey.select()}
    assert set(wallets) == {"hot", "gas"}
    assert f"hot wallet: {wallets['hot'].address}" in result.stdout
    assert f"gas wallet: {wallets['gas'].address}" in result.stdout
    for row in wallets.values():
        assert bytes(row.ciphertext).hex() not in result.output and MASTER_KEY.hex() not in result.output
    again = wallet_cli("init")
    assert again.exit_code == 0 and f"hot wallet: {wallets['hot'].address}" in again.stdout
    assert WalletKey.select().count() == 2
    wrong = wallet_cli("init", "--pool", "5", WALLET_MASTER_KEY="ee" * 32)
    assert wrong.exit_code == 1 and "does not open with master key version 1" in wrong.output
    assert pool_status(wallet_cli)["total"] == 2  # nothing sealed under the wrong key


def keys_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_keys_rotate_rewraps_everything_once_and_status_says_when_the_old_key_may_go(wallet_cli):
    assert wallet_cli("init", "--pool", "3").exit_code == 0
    new_key, old_key = f"2:{'5a' * 32}", f"1:{MASTER_KEY.hex()}"
    missing = wallet_cli("keys", "rotate", WALLET_MASTER_KEY=new_key)  # the retired key was not given
    assert missing.exit_code == 1 and "versions [1] that the ring lacks" in missing.output
    assert keys_json(wallet_cli("keys", "status", WALLET_MASTER_KEY=new_key))["missing_from_ring"] == [1]
    rotating = {"WALLET_MASTER_KEY": new_key, "WALLET_MASTER_KEYS_RETIRED": old_key}
    before = keys_json(wallet_cli("keys", "status", **rotating))
    no_secrets = {"staff_totp": {}, "user_totp": {}, "webhook": {}}
    assert before == {"master_version": 2, "ring_versions": [1, 2], "pool": {"1": 3}, "wallet": {"1": 2},
                      "secrets": no_secrets, "pending": 5, "missing_from_ring": []}
    rotated = wallet_cli("keys", "rotate", **rotating)
    assert keys_json(rotated) == {"master_version": 2, "pool_rewrapped": 3, "pool_converted": 0,
                                  "wallet_rewrapped": 2, "skipped": 0, "pending": 0,
                                  "secrets_reencrypted": {"staff_totp": 0, "user_totp": 0, "webhook": 0}}
    assert "keys rotate" in rotated.stderr and "5/5" in rotated.stderr  # the progress bar
    assert keys_json(wallet_cli("keys", "rotate", **rotating))["pool_rewrapped"] == 0  # idempotent
    after = keys_json(wallet_cli("keys", "status", WALLET_MASTER_KEY=new_key))  # the retired key dropped
    assert after["pool"] == {"2": 3} and after["wallet"] == {"2": 2} and after["pending"] == 0
    assert wallet_cli("init", "--pool", "4", WALLET_MASTER_KEY=new_key).exit_code == 0  # opens under version 2
    assert keys_json(wallet_cli("keys", "status", WALLET_MASTER_KEY=new_key))["pool"] == {"2": 4}
