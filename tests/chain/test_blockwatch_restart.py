"""Restart: a process running the actor system with BlockWatch is SIGKILLed in the middle of a catch-up; a
new one picks up from the cursor in the database. Nothing is credited twice, nothing is missed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from storage.db import connect_database
from storage.models import ChainCursor, Deposit, Operation
from devnet.anvil import send_eth, token_transfer
from tests.chain.deposits_support import (
    DEV_KEYS, N, TOKEN, Anvil, deploy_test_token, start_wallet,
)
from tests.conftest import MASTER_KEY, REDIS_URL, make_config
from tests.helpers import register, start_system, wait_until
from app.audit import run_audit

RUNNER = """
import signal, threading
from core.config import Config
from app.logs import setup_logging
from app.system import ActorSystem
setup_logging("INFO")
system = ActorSystem(Config.from_env()).start()
print("started", flush=True)
threading.Event().wait()
"""


def _spawn(env: dict[str, str], log_path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-c", RUNNER], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=os.getcwd())


def _cursor() -> int:
    row = ChainCursor.get_or_none()
    return -1 if row is None else row.height


@pytest.mark.slow
def test_sigkill_mid_catch_up_then_restart_credits_everything_once(mysql_url, redis_prefix, tmp_path):
    with Anvil() as node:
        token = deploy_test_token(node.url)
        system = start_system(make_config(mysql_url, redis_prefix), pool=10)  # accounts, no chain yet
        users = [register(system, f"restart{i}") for i in range(4)]
        system.stop()

        first_block = node.head() + 1
        expected: dict[tuple[int, str], int] = {}
        for i in range(60):
            user = users[i % len(users)]
            if i % 3 == 0:
                token_transfer(node.url, token, DEV_KEYS[1], user.deposit_address, 1000 + i)
                key = (user.account_id, TOKEN)
                amount = 1000 + i
            else:
                amount = 10**15 + i
                send_eth(node.url, DEV_KEYS[0], user.deposit_address, amount)
                key = (user.account_id, "ETH")
            expected[key] = expected.get(key, 0) + amount
            node.mine(1)
        node.mine(N)
        head = node.head()

        env = {**os.environ, "WALLET_DATABASE_URL": mysql_url, "WALLET_REDIS_URL": REDIS_URL,
               "WALLET_REDIS_PREFIX": redis_prefix, "WALLET_RPC_URLS": node.url, "WALLET_SHARDS": "4",
               "WALLET_CONFIRMATIONS": str(N), "WALLET_TOKENS": f"{TOKEN}:{token}:6",
               "WALLET_MASTER_KEY": MASTER_KEY.hex(), "WALLET_START_BLOCK": str(first_block),
               "WALLET_SCAN_BATCH_BLOCKS": "2", "WALLET_CHAIN_POLL_S": "0.05"}
        connect_database(mysql_url)
        log_path = tmp_path / "wallet.log"
        for kill_at in (first_block + 30, first_block + 80):  # killed twice, at two points of the catch-up
            process = _spawn(env, log_path)
            try:
                wait_until(lambda: _cursor() >= kill_at, timeout_s=60, what=f"catch-up past {kill_at}")
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
            assert _cursor() < head, "killed before the end of the catch-up"

        credited_before = Operation.select().where(Operation.op_id.startswith("d:")).count()
        assert 0 < credited_before < 60
        wallet = start_wallet(mysql_url, redis_prefix, [node.url], token, pool=0)
        try:
            assert wallet.scan_clean().tip == head
            assert Deposit.select().count() == 60
            assert Deposit.select().where(Deposit.status == "confirmed").count() == 60
            assert Operation.select().where(Operation.op_id.startswith("d:")).count() == 60
            for (account_id, asset), amount in expected.items():
                assert wallet.balance(account_id, asset) == amount
            report = run_audit()
            assert report.ok, report.violations
        finally:
            wallet.stop()
