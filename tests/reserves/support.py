"""A bank (tests/withdrawals/support.py) whose reconciler runs on a fake clock, and ways to break it: a spend
from the hot key behind the service's back, a deposit row duplicated so it is credited twice."""

from __future__ import annotations

import subprocess
import time

from blockwatch.deposits import deposit_op_id
from core import messages as m
from devnet.anvil import send_eth
from storage import walletkeys
from storage.models import Deposit, Reconciliation
from tests.helpers import wait_until
from tests.process.support import WALLET, wallet_env
from storage import admins
from tests.chain.deposits_support import deploy_test_token, start_wallet
from tests.withdrawals.support import ETH, NO_TIMER_MS, STAFF, TOKEN, Bank

HOT_FLOAT_ETH = 10 * ETH  # what the tests put on the hot wallet from outside: the operator's float
HOT_FLOAT_TOKENS = 10_000_000
INTERVAL_MS = 5_000


class Clock:
    def __init__(self) -> None:
        self.ms = int(time.time() * 1000)

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


def open_reconciled_bank(node, mysql_url, redis_prefix, clock: Clock, gas_float_eth: int = 0,
                         **overrides) -> Bank:
    """open_bank's service, with the reconciler on `clock` and the hot wallet's float declared and funded (and
    `gas_float_eth` declared for a gas wallet the test funds itself)."""
    token = deploy_test_token(node.url)
    values = dict(signer_tick_ms=NO_TIMER_MS, withdraw_token_fees=((TOKEN, 2_000),),
                  reconcile_interval_ms=INTERVAL_MS,
                  reconcile_float=(("ETH", HOT_FLOAT_ETH + gas_float_eth), (TOKEN, HOT_FLOAT_TOKENS)))
    values.update(overrides)
    wallet = start_wallet(mysql_url, redis_prefix, [node.url], token, pool=30,
                          system_options={"reconcile_clock_ms": clock}, **values)
    staff = {name: admins.create_admin(name, role).token for name, role in STAFF}
    bank = Bank(node, wallet, staff, walletkeys.wallet_address("hot"))
    bank.fund_hot_wallet(eth=HOT_FLOAT_ETH, tokens=HOT_FLOAT_TOKENS)
    return bank


def reconcile(bank: Bank) -> m.ReconcileSummary:
    summary = bank.router.ask_actor("reconciler", m.RunReconcile(), timeout=60)
    assert summary.error is None, summary.error
    return summary


def last_row() -> Reconciliation | None:
    return Reconciliation.select().order_by(Reconciliation.id.desc()).first()


def wait_for_interval_run(clock: Clock) -> Reconciliation:
    """Advance the fake clock by one interval; the reconciler's next tick (within a second) runs and stores."""
    after_id = last_row().id if last_row() is not None else 0
    clock.advance(INTERVAL_MS)
    wait_until(lambda: (row := last_row()) is not None and row.id > after_id and row.trigger == "interval",
               20, "the reconciler's interval run")
    return last_row()


def spend_from_hot_key(bank: Bank, amount: int, to: str) -> str:
    """A transfer signed with the hot wallet's key outside the service (a leaked key, a rogue operator)."""
    ring = bank.wallet.system.config.key_ring()
    key = ring.open(walletkeys.load_sealed("hot"))
    return send_eth(bank.node.url, "0x" + key.hex(), to, amount)


def credit_a_copy(bank: Bank, deposit: Deposit) -> None:
    """A corrupted row: a copy of a credited deposit under another log index, credited like any deposit (its
    own op id), so the ledger owes the same on-chain money twice. `wallet audit` sees nothing wrong: the copy
    has its credit; only the chain can tell."""
    log_index = deposit.log_index + 1000
    op_id = deposit_op_id(deposit.chain_id, deposit.tx_hash, log_index)
    Deposit.insert(chain_id=deposit.chain_id, tx_hash=deposit.tx_hash, log_index=log_index,
                   account_id=deposit.account_id, address=deposit.address, asset=deposit.asset,
                   amount=deposit.amount, block_number=deposit.block_number, block_hash=deposit.block_hash,
                   status="confirmed", credited_op_id=op_id).execute()
    bank.router.command(m.Credit(op_id=op_id, account_id=deposit.account_id, asset=deposit.asset,
                                 amount=deposit.amount))


def run_cli(bank: Bank, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    config = bank.wallet.system.config
    env = wallet_env(config)
    env.update(WALLET_RPC_URLS=",".join(config.rpc_urls), WALLET_TOKENS=f"{TOKEN}:{bank.wallet.token}:6",
               WALLET_RECONCILE_FLOAT=",".join(f"{a}:{v}" for a, v in config.reconcile_float))
    env.update(env_extra or {})
    return subprocess.run([WALLET, *args], env=env, capture_output=True, text=True, timeout=120)
