"""Deposits on a real anvil node, credited by the real shards in MariaDB, seen through the HTTP API."""

from __future__ import annotations

from devnet.anvil import deploy_token, rpc, send_eth, sign_tx, token_mint, token_transfer
from tests.chain.deposits_support import (
    DEV_ADDRESSES, DEV_KEYS, N, TOKEN, deploy_test_token, deposit_rows, start_wallet,
)
from tests.helpers import wait_until
from app.audit import run_audit

ETH = 10**18


def test_eth_and_token_deposits_credit_at_exactly_n_confirmations(node, wallet):
    alice, alice_address = wallet.user("alice")
    bob, bob_address = wallet.user("bob")
    eth_tx = send_eth(node.url, DEV_KEYS[0], alice_address, ETH // 2)  # automine: one block per transaction
    token_tx = token_transfer(node.url, wallet.token, DEV_KEYS[1], bob_address, 1_234_567)
    report = wallet.scan_clean()
    assert report.deposits == 2 and report.tip == node.head()

    # The ETH block has 2 confirmations now; the token block (the tip) has 1 and reaches N one block later.
    for _ in range(N - 3):
        node.mine()
        wallet.scan_clean()
    assert wallet.balance(alice.account_id) == 0  # N-1 confirmations: not yet
    [eth] = wallet.api_deposits(alice)
    assert (eth["status"], eth["confirmations"], eth["tx_hash"], eth["log_index"], eth["amount"]) == (
        "pending", N - 1, eth_tx, -1, str(ETH // 2))

    node.mine()
    assert wallet.scan_clean().credited == 1
    assert wallet.balance(alice.account_id) == ETH // 2
    assert wallet.api_balance(alice) == ETH // 2
    assert wallet.balance(bob.account_id, TOKEN) == 0  # still N-1 for the token deposit
    assert wallet.api_deposits(alice)[0]["status"] == "confirmed"

    node.mine()
    assert wallet.scan_clean().credited == 1
    assert wallet.api_balance(bob, TOKEN) == 1_234_567
    [token] = wallet.api_deposits(bob)
    assert (token["status"], token["confirmations"], token["tx_hash"], token["asset"]) == (
        "confirmed", N, token_tx, TOKEN)
    assert token["log_index"] >= 0

    node.mine(5)
    assert wallet.scan_clean().credited == 0  # credited once, never again
    assert wallet.balance(alice.account_id) == ETH // 2
    assert wallet.api_deposits(alice)[0]["confirmations"] == N + 5 + 1
    assert run_audit().ok


def test_other_contracts_small_amounts_and_strangers_are_not_credited(node, wallet):
    alice, alice_address = wallet.user("alice")
    decoy = deploy_token(node.url, DEV_KEYS[2], symbol=TOKEN, decimals=6)  # same symbol, not configured
    token_mint(node.url, decoy, DEV_KEYS[2], DEV_ADDRESSES[2], 10**9)
    token_transfer(node.url, decoy, DEV_KEYS[2], alice_address, 5_000)
    send_eth(node.url, DEV_KEYS[0], alice_address, 999)  # below the ETH minimum of 1000 wei
    send_eth(node.url, DEV_KEYS[0], DEV_ADDRESSES[4], ETH)  # not a deposit address
    token_transfer(node.url, wallet.token, DEV_KEYS[1], DEV_ADDRESSES[4], 77)
    node.mine(N)
    wallet.scan_clean()

    [small] = wallet.api_deposits(alice)
    assert (small["status"], small["amount"], small["asset"]) == ("below_minimum", "999", "ETH")
    assert wallet.balance(alice.account_id) == 0 and wallet.balance(alice.account_id, TOKEN) == 0
    assert len(deposit_rows()) == 1


def test_addresses_assigned_while_running_are_watched_and_pagination_works(node, wallet):
    carol, carol_address = wallet.user("carol")  # assigned after BlockWatch started: told by message
    hashes = [send_eth(node.url, DEV_KEYS[0], carol_address, 10_000 + i) for i in range(5)]
    node.mine(N)
    report = wallet.scan_clean()
    assert report.credited == 5
    assert wallet.balance(carol.account_id) == sum(10_000 + i for i in range(5))

    first = wallet.api.client.get("/api/v1/deposits?limit=3", headers=carol.auth).json
    second = wallet.api.client.get(f"/api/v1/deposits?limit=3&cursor={first['next_cursor']}",
                                   headers=carol.auth).json
    assert second["next_cursor"] is None
    assert [d["tx_hash"] for d in first["deposits"] + second["deposits"]] == hashes[::-1]
    assert wallet.api.client.get("/api/v1/deposits").status_code == 401
    stranger, _ = wallet.user("dave")
    assert wallet.api_deposits(stranger) == []  # own deposits only
    stats = wallet.stats()
    assert (stats.tip, stats.scan_lag_blocks, stats.deposits_credited) == (node.head(), 0, 5)


def test_blockwatch_runs_at_its_own_pace(node, mysql_url, redis_prefix):
    """No ScanNow: the self-scheduled tick finds and credits the deposit."""
    token = deploy_test_token(node.url)
    wallet = start_wallet(mysql_url, redis_prefix, [node.url], token, chain_poll_s=0.05)
    try:
        alice, address = wallet.user("alice")
        send_eth(node.url, DEV_KEYS[0], address, 3 * 10**15)
        node.mine(N - 1)
        wait_until(lambda: wallet.api_deposits(alice) and wallet.api_deposits(alice)[0]["confirmations"] == N,
                 what="the deposit seen with N confirmations")
        wait_until(lambda: wallet.api_balance(alice) == 3 * 10**15, what="the credit")
        assert set(wallet.api_deposits(alice)[0]) == {"id", "asset", "amount", "tx_hash", "log_index",
                                                      "block_number", "confirmations", "status"}
    finally:
        wallet.stop()


def test_readiness_fails_while_the_scan_lags_and_metrics_show_the_scan(node, mysql_url, redis_prefix):
    token = deploy_test_token(node.url)
    wallet = start_wallet(mysql_url, redis_prefix, [node.url], token, scan_batch_blocks=2, scan_lag_max_blocks=5)
    try:
        alice, address = wallet.user("alice")
        send_eth(node.url, DEV_KEYS[0], address, 10**15)
        node.mine(20)
        wallet.scan(max_steps=1)  # 2 of 21 blocks: 19 behind
        response = wallet.api.ops.get("/readyz")
        assert response.status_code == 503 and response.json["checks"]["chain_scan"] is False

        wallet.scan_clean()
        response = wallet.api.ops.get("/readyz")
        assert response.status_code == 200 and response.json["checks"]["chain_scan"] is True
        text = wallet.api.ops.get("/metrics").get_data(as_text=True)
        assert "wallet_chain_scan_lag_blocks 0.0" in text
        assert 'wallet_deposits{status="confirmed"} 1.0' in text
        assert f"wallet_chain_scan_tip {float(node.head())}" in text
        assert 'wallet_chain_node_head{node="#0 http://127.0.0.1:' in text
        assert "wallet_chain_deposits_credited_total 1.0" in text
    finally:
        wallet.stop()


def test_embedded_sqlite_database(node, sqlite_url):
    """The embedded default (SQLite, no Redis): deposits, a reorg with re-inclusion, one credit."""
    token = deploy_test_token(node.url)
    wallet = start_wallet(sqlite_url, None, [node.url], token)
    try:
        alice, address = wallet.user("alice")
        snapshot = node.snapshot()
        raw, tx_hash = sign_tx(node.url, DEV_KEYS[0], to=address, value=ETH, gas=21_000)
        rpc(node.url, "eth_sendRawTransaction", [raw])
        token_transfer(node.url, wallet.token, DEV_KEYS[1], address, 555)
        wallet.scan_clean()
        assert node.revert(snapshot)
        node.mine(1)
        rpc(node.url, "eth_sendRawTransaction", [raw])
        node.mine(N)
        assert wallet.scan_clean().reorgs == 1
        assert wallet.balance(alice.account_id) == ETH and wallet.balance(alice.account_id, TOKEN) == 0
        assert sorted(d["status"] for d in wallet.api_deposits(alice)) == ["confirmed", "orphaned"]
        assert run_audit().ok
    finally:
        wallet.stop()


def test_a_token_amount_the_ledger_cannot_hold_is_skipped_without_stopping_the_scan(node, wallet):
    """10**70 base units do not fit DECIMAL(65,0): recording it would fail every step for ever, and no one
    would be credited again. It is logged for an operator and skipped; the next deposits go on."""
    alice, alice_address = wallet.user("alice")
    bob, bob_address = wallet.user("bob")
    token_mint(node.url, wallet.token, DEV_KEYS[0], DEV_ADDRESSES[3], 10**70)
    token_transfer(node.url, wallet.token, DEV_KEYS[3], alice_address, 10**70)
    token_transfer(node.url, wallet.token, DEV_KEYS[1], bob_address, 5)
    wallet.scan_clean()
    for _ in range(N):
        node.mine()
        wallet.scan_clean()
    assert wallet.balance(bob.account_id, TOKEN) == 5
    assert wallet.balance(alice.account_id, TOKEN) == 0
    assert wallet.api_deposits(alice) == []
    report = run_audit()
    assert report.ok, report.violations
