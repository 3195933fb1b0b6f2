"""A randomized reorg storm on a real anvil node: over 200 deposits (ETH and the test token) across many
blocks while reorgs of depth 1..N+2 replace recent blocks, some transfers re-included in the new branch,
some re-sent later, some gone for good; the watcher is driven at random moments, sometimes one step at a
time so reorgs land in the middle of a catch-up.

At the end, against the node's final chain: every deposit on it with >= N confirmations is credited exactly
once; every other credit is a deposit reorged out after crediting, flagged for an operator; the audit passes.
"""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from eth_abi import encode
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector

from blockwatch.deposits import deposit_op_id
from storage.models import Deposit, Operation
from devnet.anvil import DEV_KEYS, rpc, token_mint
from tests.chain.deposits_support import N, TOKEN, Anvil, deploy_test_token, start_wallet
from app.audit import run_audit

SEED = int(os.environ.get("WALLET_STORM_SEED", "20241121"))
DEPOSITS = 300
TOKEN_SHARE = 0.3
USERS = 12
GAS_PRICE = 100 * 10**9  # far above anvil's base fee, so transactions signed early stay valid
CHAIN_ID = 31337


@dataclasses.dataclass
class Sent:
    raw: str
    tx_hash: str
    account_id: int
    asset: str
    amount: int


def _sign(key, to: str, value: int = 0, data: str = "0x", gas: int = 21_000) -> tuple[str, str]:
    tx = {"chainId": CHAIN_ID, "nonce": 0, "gas": gas, "gasPrice": GAS_PRICE, "to": to, "value": value,
          "data": data}
    signed = Account.sign_transaction(tx, key.key)
    return "0x" + signed.raw_transaction.hex(), "0x" + signed.hash.hex()


def _transfer_data(to: str, amount: int) -> str:
    return "0x" + (function_signature_to_4byte_selector("transfer(address,uint256)")
                   + encode(["address", "uint256"], [to, amount])).hex()


def _prepare(node: Anvil, token: str, users: list, rng: random.Random) -> list[Sent]:
    """One fresh sender per deposit (nonce 0), so any subset can be re-included in any order."""
    prepared = []
    token_senders = []
    for i in range(DEPOSITS):
        sender = Account.create()
        rpc(node.url, "anvil_setBalance", [sender.address, hex(10**20)])
        account_id, address = rng.choice(users)
        amount = rng.randint(1, 10**6)
        if rng.random() < TOKEN_SHARE:
            token_senders.append(sender.address)
            raw, tx_hash = _sign(sender, token, data=_transfer_data(address, amount), gas=120_000)
            prepared.append(Sent(raw, tx_hash, account_id, TOKEN, amount))
        else:
            raw, tx_hash = _sign(sender, address, value=amount * 10**9)
            prepared.append(Sent(raw, tx_hash, account_id, "ETH", amount * 10**9))
    for holder in token_senders:
        token_mint(node.url, token, DEV_KEYS[0], holder, 10**12, wait=False)
    node.mine(1)
    node.mine(N + 3)  # no reorg of depth <= N+2 reaches the funding
    return prepared


def _storm(node: Anvil, wallet, prepared: list[Sent], rng: random.Random) -> tuple[int, int]:
    by_hash = {s.tx_hash: s for s in prepared}
    queue = list(prepared)
    placed: dict[str, int] = {}  # tx hash -> block it is in now (as far as we did it)
    reorgs = flagged_depth = 0
    while queue:
        for item in [queue.pop() for _ in range(min(len(queue), rng.randint(0, 6)))]:
            rpc(node.url, "eth_sendRawTransaction", [item.raw])
            placed[item.tx_hash] = -1
        head = node.mine(1)
        placed.update({h: head for h, b in placed.items() if b == -1})
        if rng.random() < 0.3:
            depth = rng.randint(1, N + 2)
            reorgs += 1
            flagged_depth += depth > N
            queue.extend(by_hash[h] for h in _reorg(node, depth, head, placed, by_hash, rng))
        if rng.random() < 0.5:
            wallet.scan(max_steps=rng.choice((1, 1, 2, 1000)))
    return reorgs, flagged_depth


def _reorg(node: Anvil, depth: int, head: int, placed: dict[str, int], by_hash: dict[str, Sent],
           rng: random.Random) -> list[str]:
    """Replaces the last `depth` blocks; each removed deposit is re-included in the new branch, re-sent later,
    or dropped for good. Returns those to re-send."""
    fork = head - depth
    removed = [h for h, block in placed.items() if block > fork]
    pairs, resend = [], []
    for tx_hash in removed:
        fate = rng.random()
        if fate < 0.4:
            offset = rng.randint(0, depth - 1)
            pairs.append((by_hash[tx_hash].raw, offset))
            placed[tx_hash] = fork + 1 + offset
        else:
            del placed[tx_hash]
            if fate < 0.8:
                resend.append(tx_hash)
    node.reorg(depth, pairs)
    return resend


@pytest.mark.slow
def test_reorg_storm_credits_exactly_the_final_chain(mysql_url, redis_prefix):
    rng = random.Random(SEED)
    with Anvil() as node:
        token = deploy_test_token(node.url)
        # small steps, so the watcher is often mid catch-up when a reorg lands
        wallet = start_wallet(mysql_url, redis_prefix, [node.url], token, pool=USERS + 5, scan_batch_blocks=2)
        try:
            users = [(u.account_id, address) for u, address in (wallet.user(f"storm{i}") for i in range(USERS))]
            node.set_automine(False)
            prepared = _prepare(node, token, users, rng)
            reorgs, deep = _storm(node, wallet, prepared, rng)
            node.mine(N)
            report = wallet.scan_clean()
            assert report.tip == node.head()
            assert reorgs >= 20 and deep >= 3, (reorgs, deep)
            _check_final_chain(node, prepared, wallet)
        finally:
            wallet.stop()


def _check_final_chain(node: Anvil, prepared: list[Sent], wallet) -> None:
    head = node.head()
    chain_id = CHAIN_ID
    rows = {}
    for row in Deposit.select():
        rows.setdefault(row.tx_hash, []).append(row)
    credit_ops = {op_id for (op_id,) in Operation.select(Operation.op_id).where(
        Operation.op_id.startswith("d:")).tuples()}
    expected: dict[tuple[int, str], int] = {}
    on_chain = 0
    for sent in prepared:
        receipt = rpc(node.url, "eth_getTransactionReceipt", [sent.tx_hash])
        mine = rows.get(sent.tx_hash, [])
        credited = [r for r in mine if deposit_op_id(chain_id, r.tx_hash, r.log_index) in credit_ops]
        if receipt is not None and head - int(receipt["blockNumber"], 16) + 1 >= N:
            on_chain += 1
            assert len(credited) == 1, (sent.tx_hash, [(r.status, r.log_index) for r in mine])
            assert credited[0].status in ("confirmed", "reorged_after_credit")
            assert (credited[0].amount, credited[0].asset, credited[0].account_id) == (
                sent.amount, sent.asset, sent.account_id)
        else:
            # not on the final chain: only a deposit flagged after its credit may carry one
            assert all(r.status == "reorged_after_credit" for r in credited), sent.tx_hash
            assert all(r.status in ("orphaned", "reorged_after_credit") for r in mine), sent.tx_hash
        for r in credited:
            key = (r.account_id, r.asset)
            expected[key] = expected.get(key, 0) + r.amount
    assert on_chain >= 200
    assert len(credit_ops) == sum(1 for rs in rows.values() for r in rs
                                  if deposit_op_id(chain_id, r.tx_hash, r.log_index) in credit_ops)
    for (account_id, asset), amount in expected.items():
        assert wallet.balance(account_id, asset) == amount
    report = run_audit()
    assert report.ok, report.violations
