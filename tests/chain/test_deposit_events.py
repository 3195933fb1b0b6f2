"""Deposit state changes on a real anvil node write their events in the same transaction (storage/events.py):
seen, confirmed, orphaned, reorged_after_credit, each once, with the deposit's identity."""

from __future__ import annotations

import json

from devnet.anvil import rpc, send_eth, sign_tx
from storage.events import Event
from tests.chain.deposits_support import DEV_KEYS, N, deposit_rows

ETH = 10**18


def events() -> list[tuple[str, int, dict]]:
    return [(e.kind, e.account_id, json.loads(e.payload)["deposit"]) for e in Event.select().order_by(Event.id)]


def test_a_deposit_seen_then_confirmed_writes_two_events(node, wallet):
    alice, address = wallet.user("alice")
    tx_hash = send_eth(node.url, DEV_KEYS[0], address, ETH)
    wallet.scan_clean()
    [(kind, account, deposit)] = events()
    assert (kind, account, deposit["tx_hash"], deposit["amount"], deposit["status"]) == (
        "deposit.seen", alice.account_id, tx_hash, str(ETH), "pending")
    node.mine(N)
    wallet.scan_clean()
    node.mine(2)
    wallet.scan_clean()  # more confirmations: no more events
    assert [(k, d["status"]) for k, _, d in events()] == [("deposit.seen", "pending"),
                                                          ("deposit.confirmed", "confirmed")]
    assert len({e.event_id for e in Event.select()}) == 2


def test_orphaned_and_reorged_after_credit_deposits_write_their_events(node, wallet):
    alice, address = wallet.user("alice")
    snapshot = node.snapshot()
    raw, tx_hash = sign_tx(node.url, DEV_KEYS[0], to=address, value=ETH, gas=21_000)
    rpc(node.url, "eth_sendRawTransaction", [raw])
    wallet.scan_clean()
    assert node.revert(snapshot)
    node.mine(3)
    wallet.scan_clean()
    assert [d.status for d in deposit_rows()] == ["orphaned"]
    assert [k for k, _, _ in events()] == ["deposit.seen", "deposit.orphaned"]

    send_eth(node.url, DEV_KEYS[1], address, 2 * ETH)
    node.mine(N)
    wallet.scan_clean()
    node.reorg(N + 2)
    node.mine(1)
    wallet.scan_clean()
    kinds = [(k, d["amount"]) for k, _, d in events()]
    assert kinds[2:] == [("deposit.seen", str(2 * ETH)), ("deposit.confirmed", str(2 * ETH)),
                         ("deposit.reorged_after_credit", str(2 * ETH))]
