"""Shared by the treasury tests: deposit addresses funded by real deposits (credited after N confirmations), the
gas wallet funded on chain, and the treasury driven by hand (RunSigner runs the withdrawals' part of the tick,
then the treasury's)."""

from __future__ import annotations

from devnet.anvil import DEV_KEYS, eth_balance, send_eth, token_balance, token_mint
from storage import walletkeys
from storage.models import Sweep, TxAttempt
from tests.withdrawals.support import ETH, N, TOKEN, Bank

SWEEP_MIN = (("ETH", 10**15), (TOKEN, 1))


def deposit_many(bank: Bank, eth_amounts: list[int], token_amounts: list[int], prefix: str = "") -> list[tuple[object, str]]:
    """One user per amount, each with its own deposit address; every deposit sent, then mined to depth once."""
    users = []
    for i, amount in enumerate(eth_amounts):
        user, address = bank.wallet.user(f"{prefix}eth{i}")
        send_eth(bank.node.url, DEV_KEYS[0], address, amount)
        users.append((user, address))
    for i, amount in enumerate(token_amounts):
        user, address = bank.wallet.user(f"{prefix}tkn{i}")
        token_mint(bank.node.url, bank.wallet.token, DEV_KEYS[0], address, amount)
        users.append((user, address))
    bank.node.mine(N)
    bank.wallet.scan_clean()
    return users


def fund_gas_wallet(bank: Bank, wei: int = ETH) -> str:
    gas = walletkeys.wallet_address("gas")
    send_eth(bank.node.url, DEV_KEYS[0], gas, wei)
    return gas


def run_until_final(bank: Bank, rounds: int = 6) -> None:
    """Tick, mine to depth, scan, until no sweep is open (bounded: a sweep that never ends fails the test)."""
    for _ in range(rounds):
        bank.sign()
        if not Sweep.select().where(Sweep.status.in_(("topup", "signed", "broadcast"))).exists():
            return
        bank.settle(N)
    raise AssertionError([(s.id, s.kind, s.status, s.operator_reason) for s in Sweep.select()])


def receipt_gas(bank: Bank, tx_hash: str) -> int:
    receipt = bank.node.rpc("eth_getTransactionReceipt", [tx_hash])
    return int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)


def mined_attempts(purpose: str) -> list[TxAttempt]:
    return list(TxAttempt.select().where((TxAttempt.purpose == purpose) & (TxAttempt.status == "mined")))


__all__ = ["ETH", "N", "SWEEP_MIN", "TOKEN", "deposit_many", "eth_balance", "fund_gas_wallet", "mined_attempts",
           "receipt_gas", "run_until_final", "token_balance"]
