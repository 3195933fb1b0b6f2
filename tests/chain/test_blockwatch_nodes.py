"""BlockWatch against failing and lying nodes: failover to the standby mid-scan and back to the primary,
and bad chain data (errors, nulls, a wrong parent, garbage) that is retried or failed over, never crashes
the watcher and never records a deposit."""

from __future__ import annotations

import pykka
import pytest

from core import messages as m
from storage.models import ChainBlock, ChainCursor, Operation
from devnet.anvil import BadNode, Fault, TcpProxy, send_eth
from tests.chain.deposits_support import DEV_KEYS, N, deploy_test_token, deposit_rows, start_wallet
from tests.helpers import wait_until
from app.audit import run_audit

COOLDOWN_S = 0.3


def _canonical_heights() -> list[int]:
    return [n for (n,) in ChainBlock.select(ChainBlock.number).where(ChainBlock.orphaned == False)  # noqa: E712
            .order_by(ChainBlock.number).tuples()]


def test_primary_dies_mid_scan_standby_takes_over_and_primary_returns(node, mysql_url, redis_prefix):
    token = deploy_test_token(node.url)
    with TcpProxy(node.port) as primary, TcpProxy(node.port) as standby:
        wallet = start_wallet(mysql_url, redis_prefix, [primary.url, standby.url], token, scan_batch_blocks=3,
                              chain_node_cooldown_s=COOLDOWN_S)
        try:
            alice, address = wallet.user("alice")
            start = wallet.scan_clean().tip
            amounts = [10**15 + i for i in range(25)]
            for amount in amounts:  # one block each, with empty blocks between
                send_eth(node.url, DEV_KEYS[0], address, amount)
                node.mine(2)
            head = node.head()

            blockwatch = wallet.system.router.actor("blockwatch")
            running = blockwatch.ask(m.ScanNow(), block=False)  # a long catch-up, 3 blocks a step
            wait_until(lambda: ChainCursor.get().height >= start + 20, what="catch-up under way")
            primary.kill()
            assert ChainCursor.get().height < head, "the primary died mid-scan"
            running.get(timeout=60)  # ends at the failed step, or goes on on the standby
            wait_until(lambda: wallet.scan().tip == head, what="catch-up on the standby")
            stats = wallet.stats()
            assert stats.active_node.startswith("#1") and stats.node_switches >= 1

            # none skipped, none twice
            assert _canonical_heights() == list(range(ChainCursor.get().start_height, head + 1))
            assert not ChainBlock.select().where(ChainBlock.orphaned == True).exists()  # noqa: E712
            node.mine(N)
            wallet.scan_clean()
            assert wallet.balance(alice.account_id) == sum(amounts)
            assert Operation.select().where(Operation.op_id.startswith("d:")).count() == len(amounts)

            primary.restore()
            wait_until(lambda: wallet.scan().errors == () and wallet.stats().active_node.startswith("#0"),
                     what="the primary taken back")
            send_eth(node.url, DEV_KEYS[0], address, 7000)
            node.mine(N)
            assert wallet.scan_clean().credited == 1
            assert wallet.balance(alice.account_id) == sum(amounts) + 7000
            assert run_audit().ok
        finally:
            wallet.stop()


BAD_ANSWERS = {
    "error": Fault("error", code=-32000, message="header not found"),
    "fatal-error": Fault("error", code=-32602, message="invalid params"),
    "null": Fault("null"),
    "garbage": Fault("garbage"),
    "http-502": Fault("http", status=502),
    "drop": Fault("drop"),
    "wrong-parent": Fault("patch", fields={"parentHash": "0x" + "ab" * 32}),
}


@pytest.fixture
def behind_bad_node(node, mysql_url, redis_prefix):
    """A wallet reading the chain only through a BadNode (faults set by the test), scanned once, and a user
    with a deposit address: (bad node, wallet, user, address)."""
    token = deploy_test_token(node.url)
    with BadNode(node.url) as bad:
        wallet = start_wallet(mysql_url, redis_prefix, [bad.url], token, chain_node_cooldown_s=COOLDOWN_S)
        try:
            alice, address = wallet.user("alice")
            wallet.scan_clean()
            yield bad, wallet, alice, address
        finally:
            wallet.stop()


def test_bad_chain_data_is_never_recorded_and_never_stops_the_watcher(node, behind_bad_node):
    bad, wallet, alice, address = behind_bad_node
    for recorded, (name, fault) in enumerate(BAD_ANSWERS.items()):
        tip = wallet.scan_clean().tip
        bad.set_fault("eth_getBlockByNumber", fault)
        send_eth(node.url, DEV_KEYS[0], address, 10**15)  # straight to the node, not through `bad`
        node.mine(N)
        for _ in range(2):
            report = wallet.scan()
            assert report.errors and report.tip == tip, name
        assert len(deposit_rows()) == recorded, name
        assert not ChainBlock.select().where(ChainBlock.orphaned == True).exists(), name  # noqa: E712
        assert wallet.system.router.actor("blockwatch").ask(m.Ping(), timeout=5) == m.Pong("blockwatch")

        bad.clear_faults()
        wait_until(lambda: wallet.scan().errors == (), what=f"the node usable again after {name}")
        assert len(deposit_rows(status="confirmed")) == recorded + 1, name
    assert wallet.balance(alice.account_id) == len(BAD_ANSWERS) * 10**15


def test_a_transient_fault_is_retried_within_the_step(node, behind_bad_node):
    bad, wallet, alice, address = behind_bad_node
    send_eth(node.url, DEV_KEYS[0], address, 10**16)
    node.mine(N)
    bad.set_fault("eth_getLogs", Fault("garbage", times=1))
    bad.set_fault("eth_getBlockByNumber", Fault("error", times=2))
    report = wallet.scan_clean()
    assert report.credited == 1 and wallet.balance(alice.account_id) == 10**16


def test_blockwatch_starts_while_no_node_answers_and_catches_up_later(node, mysql_url, redis_prefix):
    token = deploy_test_token(node.url)
    proxy = TcpProxy(node.port)  # not listening yet: the node is unreachable at start
    wallet = start_wallet(mysql_url, redis_prefix, [proxy.url], token, chain_node_cooldown_s=COOLDOWN_S,
                          start_block=1)
    try:
        alice, address = wallet.user("alice")
        assert wallet.scan().errors
        assert wallet.stats().connected is False
        proxy.start()
        send_eth(node.url, DEV_KEYS[0], address, 10**16)
        node.mine(N)
        report = wallet.scan_clean()
        assert report.credited == 1 and wallet.balance(alice.account_id) == 10**16
    finally:
        wallet.stop()
        proxy.kill()
    assert not pykka.ActorRegistry.get_all()
