"""Crediting corner cases: a credit still queued in a shard when its deposit is reorged out (as after a
BlockWatch restart, when nothing in memory says a credit was asked), credits a shard refuses for good (they
must not starve newer deposits), a reorg seen only as missing receipts (not a node fault), and the audit's
deposit cross-check."""

from __future__ import annotations

from core import messages as m
from blockwatch.deposits import deposit_op_id
from core.limits import DUE_CREDITS_MAX
from storage import sql
from storage.db import make_database
from storage.models import Deposit, Operation, now_ms
from devnet.anvil import BadNode, Fault, rpc, send_eth, sign_tx
from tests.chain.deposits_support import (
    DEV_KEYS, N, deploy_test_token, deposit_rows, on_hold, start_wallet,
)
from tests.conftest import make_config
from tests.helpers import register, start_system, wait_until
from app.audit import run_audit

ETH = 10**18
CHAIN_ID = 31337


def test_a_credit_queued_in_its_shard_is_waited_for_before_its_deposit_is_orphaned(node, wallet, mysql_url):
    """The Credit is told to the shard by the test, not asked by this BlockWatch: exactly what a BlockWatch
    that restarted after asking it sees. The shard is held inside its commit by a row lock."""
    alice, address = wallet.user("alice")
    send_eth(node.url, DEV_KEYS[0], address, ETH)
    node.mine(N)
    wallet.scan_clean()
    assert wallet.balance(alice.account_id) == ETH  # alice's balance row exists: it can be locked

    snapshot = node.snapshot()
    raw, tx_hash = sign_tx(node.url, DEV_KEYS[0], to=address, value=2 * ETH, gas=21_000)
    rpc(node.url, "eth_sendRawTransaction", [raw])
    wallet.scan_clean()
    [deposit] = deposit_rows(tx_hash=tx_hash)
    assert deposit.status == "pending"

    shard = wallet.system.router.shard_ref(alice.shard)
    locker = make_database(mysql_url, max_connections=1)
    with locker.atomic() as lock:
        locker.execute_sql("SELECT available FROM balance WHERE account_id = %s AND asset = 'ETH' FOR UPDATE",
                           (alice.account_id,))
        wallet.system.router.tell_shard(alice.shard, m.Credit(op_id=deposit_op_id(CHAIN_ID, tx_hash, -1),
                                                              account_id=alice.account_id, asset="ETH",
                                                              amount=2 * ETH))
        wait_until(lambda: shard.actor_inbox.empty(), what="the shard inside its commit")
        assert node.revert(snapshot)
        node.mine(2)  # a longer chain without the deposit
        running = wallet.system.router.actor("blockwatch").ask(m.ScanNow(), block=False)
        wait_until(lambda: not shard.actor_inbox.empty() or deposit_rows(tx_hash=tx_hash)[0].status != "pending",
                 what="BlockWatch pinging the shard, or orphaning the deposit")
        assert deposit_rows(tx_hash=tx_hash)[0].status == "pending", "orphaned while its credit may still land"
        lock.rollback()
    locker.close()

    report = running.get(timeout=60)
    assert report.reorgs == 1 and not report.errors, report.errors
    [deposit] = deposit_rows(tx_hash=tx_hash)
    assert (deposit.status, deposit.held_at is not None) == ("reorged_after_credit", True)
    assert on_hold(alice.account_id)
    assert wallet.balance(alice.account_id) == 3 * ETH  # the ledger is never changed silently
    assert run_audit().ok


def test_credits_refused_for_good_leave_the_due_set_and_never_starve_newer_deposits(node, wallet, caplog):
    """A full due batch of deposits in an asset no longer configured (unknown_asset at the shard)."""
    alice, address = wallet.user("alice")
    wallet.scan_clean()
    now = now_ms()
    stuck = [(CHAIN_ID, "0x%064x" % i, -1, alice.account_id, address, "GONE", "5", 1, "0x" + "11" * 32, "pending",
              now, now) for i in range(DUE_CREDITS_MAX)]
    sql.insert_many(Deposit._meta.database, "deposit", (
        "chain_id", "tx_hash", "log_index", "account_id", "address", "asset", "amount", "block_number",
        "block_hash", "status", "created_at", "updated_at"), stuck)
    send_eth(node.url, DEV_KEYS[0], address, ETH)
    node.mine(N)

    for _ in range(3):
        wallet.scan_clean()
    assert wallet.balance(alice.account_id) == ETH
    assert Deposit.select().where(Deposit.status == "credit_failed").count() == DUE_CREDITS_MAX
    assert deposit_rows(asset="ETH")[0].status == "confirmed"
    stats = wallet.stats()
    assert stats.credits_refused == DUE_CREDITS_MAX
    assert stats.deposits_with_status("credit_failed") == DUE_CREDITS_MAX
    assert any(r.getMessage().startswith("deposit credit refused") and r.levelname == "ERROR"
               for r in caplog.records)
    text = wallet.api.ops.get("/metrics").get_data(as_text=True)
    assert f'wallet_deposits{{status="credit_failed"}} {float(DUE_CREDITS_MAX)}' in text


def test_receipts_gone_after_the_check_are_a_reorg_not_a_node_fault(node, mysql_url, redis_prefix):
    token = deploy_test_token(node.url)
    with BadNode(node.url) as bad:
        wallet = start_wallet(mysql_url, redis_prefix, [bad.url, node.url], token)
        try:
            alice, address = wallet.user("alice")
            wallet.scan_clean()
            send_eth(node.url, DEV_KEYS[0], address, ETH)
            node.mine(N)
            bad.set_fault("eth_getTransactionReceipt", Fault("null", times=4))  # every attempt of one step
            errors = [wallet.scan().errors for _ in range(5)]
            assert "the chain changed during the step" in errors[0][0]
            assert errors[-1] == ()
            assert wallet.balance(alice.account_id) == ETH
            stats = wallet.stats()
            assert stats.node_switches == 0 and stats.active_node.startswith("#0")
        finally:
            wallet.stop()


def test_audit_cross_checks_deposits_and_their_credit_operations(mysql_url, redis_prefix):
    system = start_system(make_config(mysql_url, redis_prefix), pool=5)
    try:
        user = register(system, "alice")
        op_id = deposit_op_id(CHAIN_ID, "0x" + "ab" * 32, -1)
        system.router.command(m.Credit(op_id=op_id, account_id=user.account_id, asset="ETH", amount=7))
        now = now_ms()
        for tx, status in (("ab", "confirmed"), ("cd", "pending")):
            Deposit.create(chain_id=CHAIN_ID, tx_hash="0x" + tx * 32, log_index=-1, account_id=user.account_id,
                           address=user.deposit_address, asset="ETH", amount=7, block_number=5,
                           block_hash="0x" + "11" * 32, status=status, created_at=now, updated_at=now)
        assert run_audit().ok, run_audit().violations

        db = Deposit._meta.database
        db.execute_sql("UPDATE deposit SET status = 'orphaned' WHERE tx_hash = %s", ("0x" + "ab" * 32,))
        db.execute_sql("UPDATE deposit SET status = 'confirmed' WHERE tx_hash = %s", ("0x" + "cd" * 32,))
        assert sorted(run_audit().violations) == [
            f"credit operation {op_id} belongs to no credited deposit (deposit status orphaned)",
            f"deposit {deposit_op_id(CHAIN_ID, '0x' + 'cd' * 32, -1)} is confirmed but its credit operation "
            "does not exist",
        ]
        assert Operation.select().where(Operation.op_id == op_id).exists()
    finally:
        system.stop()
