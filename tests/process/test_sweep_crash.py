"""A SIGKILL of a real `wallet serve` in the middle of a token sweep, on real anvil: after the gas top-up was
sent and mined, before the token transfer (which waits for the top-up's confirmations) left. The restart sends
the token transfer signed with the top-up, from the rows: one top-up on chain, the gas wallet debited once, the
tokens in the hot wallet, nobody's balance changed, `wallet audit` clean."""

from __future__ import annotations

import pytest

from app.audit import run_audit
from core.ports import free_port
from devnet.anvil import DEV_KEYS, Anvil, deploy_token, eth_balance, send_eth, token_balance, token_mint
from storage import walletkeys
from storage.db import connect_database
from storage.models import Balance, PoolKey, Sweep, TxAttempt
from tests.conftest import make_config
from tests.helpers import wait_until
from tests.process.support import ServeProcess, prepare, wallet_env

ETH = 10**18
N = 2
AMOUNT = 7_000_000


@pytest.fixture
def node():
    with Anvil() as anvil:
        yield anvil


def serve(config, node: Anvil, token: str, tmp_path, port: int) -> ServeProcess:
    env = wallet_env(config, port)
    env.update(WALLET_RPC_URLS=node.url, WALLET_SIGNER_TICK_MS="200", WALLET_CHAIN_POLL_S="0.2",
               WALLET_CONFIRMATIONS=str(N), WALLET_TOKENS=f"TKN:{token}:6", WALLET_SWEEP_MIN="TKN:1",
               WALLET_START_BLOCK="0", WALLET_MIN_DEPOSITS="ETH:1000,TKN:1")
    return ServeProcess(env, tmp_path / "serve.log").start()


def receipt_gas(node: Anvil, tx_hash: str) -> int:
    receipt = node.rpc("eth_getTransactionReceipt", [tx_hash])
    return int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)


def test_a_kill_between_top_up_and_token_send_resumes_without_a_second_top_up(node, mysql_url, redis_prefix,
                                                                               tmp_path):
    token = deploy_token(node.url, DEV_KEYS[0], symbol="TKN", decimals=6)
    config = make_config(mysql_url, redis_prefix, confirmations=N)
    accounts = prepare(config, {"tina": 0})
    connect_database(mysql_url)
    address = PoolKey.get(PoolKey.account_id == accounts["tina"][0]).address
    hot, gas = walletkeys.wallet_address("hot"), walletkeys.wallet_address("gas")
    send_eth(node.url, DEV_KEYS[0], gas, ETH)
    token_mint(node.url, token, DEV_KEYS[0], address, AMOUNT)
    node.mine(N)
    gas0 = eth_balance(node.url, gas)
    port = free_port()
    server = serve(config, node, token, tmp_path, port)
    try:
        def topped_up() -> bool:
            sweep = Sweep.get_or_none()
            return sweep is not None and sweep.status == "topup" and TxAttempt.select().where(
                (TxAttempt.purpose == "gas_topup") & (TxAttempt.sends >= 1)).exists()

        wait_until(topped_up, timeout_s=60, interval_s=0.1, what="the gas top-up sent", detail=server.log_tail)
        server.kill()  # the top-up is mined (automine); the token transfer waits for its confirmations
        (topup,) = TxAttempt.select().where(TxAttempt.purpose == "gas_topup")
        (transfer,) = TxAttempt.select().where(TxAttempt.purpose == "sweep")
        assert transfer.sends == 0 and token_balance(node.url, token, address) == AMOUNT
        assert node.rpc("eth_getTransactionReceipt", [topup.tx_hash]) is not None
        server = serve(config, node, token, tmp_path, port)

        def swept() -> bool:
            node.mine(1)
            return Sweep.get().status == "confirmed"

        wait_until(swept, timeout_s=60, interval_s=0.3, what="the sweep confirmed after the restart",
                   detail=server.log_tail)
        assert [a.tx_hash for a in TxAttempt.select().where(TxAttempt.purpose == "gas_topup")] == [topup.tx_hash]
        assert [a.tx_hash for a in TxAttempt.select().where(TxAttempt.purpose == "sweep")] == [transfer.tx_hash]
        assert int(node.rpc("eth_getTransactionCount", [gas, "latest"]), 16) == 1  # one top-up on chain
        assert gas0 - eth_balance(node.url, gas) == int(topup.value) + receipt_gas(node, topup.tx_hash)
        assert token_balance(node.url, token, address) == 0
        assert token_balance(node.url, token, hot) == AMOUNT
        sweep = Sweep.get()
        assert int(sweep.gas_paid) == receipt_gas(node, topup.tx_hash) + receipt_gas(node, transfer.tx_hash)
        assert server.terminate() == 0
        credited = Balance.get((Balance.account_id == accounts["tina"][0]) & (Balance.asset == "TKN"))
        assert (int(credited.available), int(credited.frozen)) == (AMOUNT, 0)  # the deposit, once; no top-up credit
        report = run_audit()
        assert report.ok, report.violations
    finally:
        server.ensure_stopped()
