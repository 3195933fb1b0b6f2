"""Offline signing: the bytes `chain.txbuild.sign` makes are exactly eth-account's for the same transaction
(ETH and ERC-20 transfers, random fields), and a node accepts them (anvil)."""

from __future__ import annotations

from eth_account import Account
from hypothesis import given, settings, strategies as st

from chain.txbuild import Fees, Payment, build, erc20_transfer_data, sign
from devnet.anvil import Anvil, send_eth, wait_receipt, DEV_KEYS

KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
TO = "0x000000000000000000000000000000000000dEaD"
TOKEN = "0x" + "12" * 20


@settings(max_examples=60, deadline=None)
@given(nonce=st.integers(0, 2**40), chain_id=st.integers(1, 2**32), value=st.integers(0, 10**30),
       priority=st.integers(1, 10**12), extra=st.integers(0, 10**12), gas=st.integers(21_000, 10**7),
       token=st.booleans(), amount=st.integers(1, 2**200))
def test_the_signed_bytes_are_eth_accounts(nonce, chain_id, value, priority, extra, gas, token, amount):
    fees = Fees(priority + extra, priority)
    payment = Payment(TO, token=TOKEN, token_amount=amount) if token else Payment(TO, value=value)
    ours = sign(KEY, chain_id, nonce, payment, gas, fees)
    theirs = Account.sign_transaction(build(chain_id, nonce, payment, gas, fees), KEY)
    assert ours.raw == bytes(theirs.raw_transaction)
    assert ours.tx_hash == "0x" + bytes(theirs.hash).hex()
    assert Account.recover_transaction(ours.raw) == Account.from_key(KEY).address


def test_the_token_call_data_is_the_abi_encoding():
    data = erc20_transfer_data(TO, 5)
    assert data.hex() == "a9059cbb" + "0" * 24 + TO[2:].lower() + "0" * 63 + "5"


def test_a_node_accepts_and_mines_what_we_sign():
    with Anvil() as node:
        sender = Account.from_key(KEY).address
        send_eth(node.url, DEV_KEYS[0], sender, 10**18)
        base = int(node.rpc("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
        signed = sign(KEY, 31337, 0, Payment(TO, value=12345), 21_000, Fees(2 * base + 10**9, 10**9))
        assert node.rpc("eth_sendRawTransaction", ["0x" + signed.raw.hex()]) == signed.tx_hash
        assert wait_receipt(node.url, signed.tx_hash)["status"] == "0x1"
        assert int(node.rpc("eth_getBalance", [TO, "latest"]), 16) == 12345
