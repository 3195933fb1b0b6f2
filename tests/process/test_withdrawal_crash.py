"""Crashes of a real `wallet serve` around the signer's broadcast (DESIGN.md rule 4), on real anvil: a
SIGKILL after the attempt is committed and before any node took it sends the same hash on restart; a SIGKILL
after a node took it but before the status was written finds "already known"/"nonce too low" on restart. Either
way: one transfer on chain, one attempt, the withdrawal confirmed, never signed again."""

from __future__ import annotations

import pytest
import requests

from app.audit import run_audit
from core.ports import free_port
from devnet.anvil import DEV_KEYS, Anvil, BadNode, Fault, eth_balance, send_eth
from storage import admins, walletkeys
from storage.db import connect_database
from storage.models import TxAttempt, Withdrawal
from tests.conftest import make_config
from tests.helpers import wait_until
from tests.process.support import PAY_PASSWORD, ServeProcess, login, prepare, wallet_env

ETH = 10**18
N = 2
RECIPIENT = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def node():
    with Anvil() as anvil:
        yield anvil


def serve(config, rpc_url: str, tmp_path, port: int) -> ServeProcess:
    env = wallet_env(config, port)
    env.update(WALLET_RPC_URLS=rpc_url, WALLET_SIGNER_TICK_MS="200", WALLET_CHAIN_POLL_S="0.2",
               WALLET_CONFIRMATIONS=str(N))
    return ServeProcess(env, tmp_path / "serve.log").start()


@pytest.mark.parametrize("fault", ["drop", "swallow"])
def test_a_kill_around_the_broadcast_never_signs_twice(node, mysql_url, redis_prefix, tmp_path, fault):
    config = make_config(mysql_url, redis_prefix, confirmations=N)
    prepare(config, {"alice": ETH})
    connect_database(mysql_url)
    reviewer = admins.create_admin("rita", "reviewer").token
    hot = walletkeys.wallet_address("hot")
    send_eth(node.url, DEV_KEYS[0], hot, 2 * ETH)
    proxy = BadNode(node.url).start()
    port = free_port()
    server = serve(config, proxy.url, tmp_path, port)
    http = requests.Session()
    try:
        token = login(http, server.url, "alice")
        asked = http.post(server.url + "/api/v1/withdrawals", timeout=10, headers={
            "Authorization": f"Bearer {token}", "Idempotency-Key": "crash-1"}, json={
            "asset": "ETH", "to_address": RECIPIENT, "amount": str(ETH // 10), "pay_password": PAY_PASSWORD,
            "speed": "standard"})
        assert asked.status_code == 202, asked.text
        withdrawal_id = int(asked.json()["id"])
        # Broadcasts now fail: dropped before the node sees them, or taken by the node with the answer lost.
        proxy.set_fault("eth_sendRawTransaction", Fault(fault))
        approved = http.post(f"{server.url}/admin/api/v1/withdrawals/{withdrawal_id}/approve", timeout=10,
                             headers={"Authorization": f"Bearer {reviewer}"})
        assert approved.status_code == 200, approved.text
        wait_until(lambda: TxAttempt.select().where(TxAttempt.sends >= 1).exists(), timeout_s=30,
                   what="the attempt committed and a broadcast tried", detail=server.log_tail)
        assert Withdrawal.get_by_id(withdrawal_id).status == "signed"
        server.kill()
        (attempt,) = TxAttempt.select()
        proxy.clear_faults()
        server = serve(config, proxy.url, tmp_path, port)

        def confirmed() -> bool:
            node.mine(1)
            return Withdrawal.get_by_id(withdrawal_id).status == "confirmed"

        wait_until(confirmed, timeout_s=60, interval_s=0.3, what="the withdrawal confirmed after the restart",
                   detail=server.log_tail)
        assert [a.tx_hash for a in TxAttempt.select()] == [attempt.tx_hash]  # the same bytes, never re-signed
        assert Withdrawal.get_by_id(withdrawal_id).tx_hash == attempt.tx_hash
        assert int(node.rpc("eth_getTransactionCount", [hot, "latest"]), 16) == 1  # one transfer on chain
        assert eth_balance(node.url, RECIPIENT) == ETH // 10
        assert server.terminate() == 0
        report = run_audit()
        assert report.ok, report.violations
    finally:
        server.ensure_stopped()
        proxy.close()
