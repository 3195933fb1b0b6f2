"""Fee quotes (chain/fees.py) from eth_feeHistory on real anvil (anvil_setNextBlockBaseFeePerGas moves the base
fee; three EIP-1559 transactions with tips of 1, 2 and 3 gwei in one block give slow, standard and fast) and
on the embedded chain (whose eth_feeHistory must answer as anvil does); cached for the TTL on a fake clock;
Unavailable, without asking again for a while, when no node answers; a malformed answer leaves the node; the
gas of a token transfer from eth_estimateGas, with its margin, enough for the real transfer."""

from __future__ import annotations

import json

import pytest
from eth_account import Account
from hypothesis import given, settings, strategies as st

from chain.embedded import EmbeddedChain
from chain.erc20 import encode_transfer
from chain.errors import RetriableChainError
from chain.fees import (ETH_TRANSFER_GAS, FeeOracle, FeeQuote, GasEstimateRefused, estimate_token_transfer_gas,
                        quotes_from_fee_history)
from chain.nodes import ChainClient
from core.errors import Unavailable
from core.limits import PRIORITY_FEE_FLOOR_WEI, TOKEN_GAS_MARGIN_MIN
from devnet.anvil import (CONTRACTS, DEV_ADDRESSES, DEV_KEYS, Anvil, BadNode, Fault, deploy_token, rpc,
                          token_mint, wait_receipt)
from devnet.waiting import FakeClock

GWEI = 10**9
ALICE, BOB, CAROL = DEV_ADDRESSES[1], DEV_ADDRESSES[2], DEV_ADDRESSES[3]


def started(url: str, **options) -> ChainClient:
    client = ChainClient([url], retries=0, **options)
    client.start()
    return client


def signed_1559(url: str, key: str, nonce: int, tip: int, max_fee: int) -> str:
    tx = {"type": 2, "chainId": int(rpc(url, "eth_chainId"), 16), "nonce": nonce, "to": CAROL, "value": 1,
          "gas": ETH_TRANSFER_GAS, "maxPriorityFeePerGas": tip, "maxFeePerGas": max_fee}
    return "0x" + Account.sign_transaction(tx, key).raw_transaction.hex()


def one_block_with_tips(url: str, keys: list[str], tips: list[int], mine) -> None:
    """One transaction per key (its next nonce), tips as given, all in the next block."""
    for key, tip in zip(keys, tips):
        nonce = int(rpc(url, "eth_getTransactionCount", [Account.from_key(key).address, "pending"]), 16)
        rpc(url, "eth_sendRawTransaction", [signed_1559(url, key, nonce, tip, 500 * GWEI)])
    mine()


# -- the rule --------------------------------------------------------------------------------------------

def history(base_fees: list[int], ratios: list[float], rewards: list[list[int]], oldest: int = 7) -> dict:
    return {"oldestBlock": hex(oldest), "baseFeePerGas": [hex(b) for b in base_fees], "gasUsedRatio": ratios,
            "reward": [[hex(r) for r in row] for row in rewards]}


def test_the_rule_medians_of_busy_blocks_floor_and_twice_the_next_base_fee():
    quotes = quotes_from_fee_history(history(
        [10 * GWEI, 11 * GWEI, 12 * GWEI, 13 * GWEI, 14 * GWEI],
        [0.5, 0.0, 0.9, 0.3],
        [[1 * GWEI, 2 * GWEI, 5 * GWEI], [0, 0, 0], [3 * GWEI, 4 * GWEI, 9 * GWEI], [2 * GWEI, 3 * GWEI, 4 * GWEI]]),
        fetched_at_ms=42)
    assert quotes.slow == FeeQuote(28 * GWEI + 2 * GWEI, 2 * GWEI)  # median of 1, 3, 2: the empty block left out
    assert quotes.standard == FeeQuote(28 * GWEI + 3 * GWEI, 3 * GWEI)
    assert quotes.fast == FeeQuote(28 * GWEI + 5 * GWEI, 5 * GWEI)
    assert (quotes.next_base_fee_per_gas, quotes.newest_block, quotes.fetched_at_ms) == (14 * GWEI, 10, 42)
    assert quotes.of("fast") is quotes.fast
    with pytest.raises(ValueError):
        quotes.of("ludicrous")
    empty = quotes_from_fee_history(history([7, 7, 7], [0.0, 0.0], [[0, 0, 0], [0, 0, 0]]))
    assert empty.slow == empty.standard == empty.fast == FeeQuote(14 + PRIORITY_FEE_FLOOR_WEI, PRIORITY_FEE_FLOOR_WEI)


@pytest.mark.parametrize("broken", [
    "not an object",
    {"baseFeePerGas": ["0x1"], "gasUsedRatio": [], "reward": [], "oldestBlock": "0x0"},  # no block
    {"baseFeePerGas": ["0x1", "0x1"], "gasUsedRatio": [0.5, 0.5], "reward": [["0x1"] * 3] * 2, "oldestBlock": "0x0"},
    {"baseFeePerGas": ["0x1", "0x1"], "gasUsedRatio": [0.5], "reward": [["0x1", "0x1"]], "oldestBlock": "0x0"},
    {"baseFeePerGas": ["0x1", "0x1"], "gasUsedRatio": [1.5], "reward": [["0x1"] * 3], "oldestBlock": "0x0"},
    {"baseFeePerGas": ["0x1", "12"], "gasUsedRatio": [0.5], "reward": [["0x1"] * 3], "oldestBlock": "0x0"},
    {"baseFeePerGas": ["0x1", "0x1"], "gasUsedRatio": [0.5], "reward": [["0x1", "-0x1", "0x1"]], "oldestBlock": "0x0"},
    {"baseFeePerGas": ["0x1", "0x1"], "gasUsedRatio": [0.5], "reward": [["0x1"] * 3]},
])
def test_a_malformed_history_is_a_node_fault_naming_the_problem(broken):
    with pytest.raises(RetriableChainError):
        quotes_from_fee_history(broken)


wei = st.integers(0, 10**24)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(wei, min_size=n + 1, max_size=n + 1), st.lists(st.floats(0, 1), min_size=n, max_size=n),
    st.lists(st.lists(wei, min_size=3, max_size=3).map(sorted), min_size=n, max_size=n))))
def test_quotes_are_never_below_the_floor_or_the_base_fee_and_faster_is_never_cheaper(window):
    base_fees, ratios, rewards = window
    quotes = quotes_from_fee_history(history(base_fees, ratios, rewards))
    tips = [q.max_priority_fee_per_gas for q in (quotes.slow, quotes.standard, quotes.fast)]
    assert PRIORITY_FEE_FLOOR_WEI <= tips[0] <= tips[1] <= tips[2]
    for q in (quotes.slow, quotes.standard, quotes.fast):
        assert q.max_fee_per_gas == 2 * base_fees[-1] + q.max_priority_fee_per_gas
    busy = [row for ratio, row in zip(ratios, rewards) if ratio > 0]
    assert tips[2] <= max([PRIORITY_FEE_FLOOR_WEI] + [max(row) for row in busy])


# -- real anvil ------------------------------------------------------------------------------------------

def test_anvil_quotes_follow_the_base_fee_and_the_tips_cached_for_the_ttl():
    clock = FakeClock(1_000)
    with Anvil() as node, BadNode(node.url) as counting:
        oracle = FeeOracle(started(counting.url), clock_ms=clock, ttl_ms=5_000)
        node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(50 * GWEI)])
        node.mine()
        first = oracle.quotes()
        assert first.next_base_fee_per_gas == 50 * GWEI * 7 // 8  # an empty block after it: -12.5 %
        assert first.slow == first.fast == FeeQuote(2 * first.next_base_fee_per_gas + PRIORITY_FEE_FLOOR_WEI,
                                                    PRIORITY_FEE_FLOOR_WEI)  # no transaction in the window
        assert counting.calls["eth_feeHistory"] == 1 and first.fetched_at_ms == 1_000

        node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(100 * GWEI)])
        node.mine()
        clock.advance(4_999)
        assert oracle.quotes() is first and oracle.quote("standard") == first.standard  # cached: no call
        assert counting.calls["eth_feeHistory"] == 1
        clock.advance(1)
        moved = oracle.quotes()
        assert counting.calls["eth_feeHistory"] == 2 and moved.next_base_fee_per_gas == 100 * GWEI * 7 // 8

        node.set_automine(False)
        one_block_with_tips(node.url, list(DEV_KEYS[1:4]), [3 * GWEI, 1 * GWEI, 2 * GWEI], node.mine)
        clock.advance(5_000)
        tipped = oracle.quotes()
        assert [q.max_priority_fee_per_gas for q in (tipped.slow, tipped.standard, tipped.fast)] == [
            1 * GWEI, 2 * GWEI, 3 * GWEI]
        base = int(node.rpc("eth_feeHistory", [1, "latest", []])["baseFeePerGas"][-1], 16)
        assert tipped.next_base_fee_per_gas == base and tipped.fast.max_fee_per_gas == 2 * base + 3 * GWEI


def test_no_node_is_unavailable_at_once_for_a_while_then_asked_again():
    clock = FakeClock()
    with Anvil() as node, BadNode(node.url) as flaky:
        client = started(flaky.url + "/v3/s3cret-key", cooldown_s=0)  # a provider's URL with its API key
        oracle = FeeOracle(client, clock_ms=clock, ttl_ms=5_000, retry_after_ms=1_000)
        flaky.set_fault("eth_feeHistory", Fault("drop"))
        with pytest.raises(Unavailable, match="no node answered eth_feeHistory") as caught:
            oracle.quotes()
        assert caught.value.code == "service_unavailable" and "s3cret" not in caught.value.detail
        assert (flaky.calls["eth_feeHistory"], oracle.fetches) == (1, 1)
        clock.advance(999)
        with pytest.raises(Unavailable):
            oracle.quotes()
        assert (flaky.calls["eth_feeHistory"], oracle.fetches) == (1, 1)  # not asked again yet
        flaky.clear_faults()
        client.refresh()  # the failed node answers its health check again
        clock.advance(1)
        assert oracle.quotes().next_base_fee_per_gas > 0 and flaky.calls["eth_feeHistory"] == 2


def test_a_malformed_answer_leaves_the_node():
    with Anvil() as node, BadNode(node.url) as liar:
        client = started(liar.url)
        liar.set_fault("eth_feeHistory", Fault("result", value={"baseFeePerGas": "lots"}))
        with pytest.raises(Unavailable, match="answered eth_feeHistory wrongly"):
            FeeOracle(client).quotes()
        assert client.metrics()["failures"] == 1 and client.active_url is None


def test_token_transfer_gas_is_the_estimate_with_its_margin_and_enough():
    with Anvil() as node:
        token = deploy_token(node.url, DEV_KEYS[0])
        token_mint(node.url, token, DEV_KEYS[0], ALICE, 10**21)
        client = started(node.url)
        data = encode_transfer(BOB, 10**18)
        raw = int(node.rpc("eth_estimateGas", [{"from": ALICE, "to": token, "data": data}]), 16)
        limit = estimate_token_transfer_gas(client.session(), token, ALICE, BOB, 10**18)
        assert limit == raw + max(raw // 4, TOKEN_GAS_MARGIN_MIN) and ETH_TRANSFER_GAS < raw < limit
        tx = {"type": 2, "chainId": 31337, "nonce": 0, "to": token, "value": 0, "data": data, "gas": limit,
              "maxPriorityFeePerGas": GWEI, "maxFeePerGas": 100 * GWEI}
        tx_hash = rpc(node.url, "eth_sendRawTransaction",
                      ["0x" + Account.sign_transaction(tx, DEV_KEYS[1]).raw_transaction.hex()])
        assert int(wait_receipt(node.url, tx_hash)["gasUsed"], 16) <= limit
        with pytest.raises(GasEstimateRefused, match="balance too low") as refused:  # CAROL holds no token
            estimate_token_transfer_gas(client.session(), token, CAROL, BOB, 1)
        assert refused.value.code == 3 and client.metrics()["failures"] == 0  # the node is fine
        with pytest.raises(ValueError):
            estimate_token_transfer_gas(client.session(), token, ALICE, BOB, 2**256)
        node.kill()
        with pytest.raises(Unavailable, match="no node answered eth_estimateGas"):
            estimate_token_transfer_gas(client.session(), token, ALICE, BOB, 1)


# -- the embedded chain ----------------------------------------------------------------------------------

def test_the_embedded_chain_quotes_fees_as_anvil_does():
    with EmbeddedChain(block_interval_s=0) as chain:
        client = started(chain.url)
        oracle = FeeOracle(client, clock_ms=FakeClock())
        empty = oracle.quotes()
        assert empty.fast == FeeQuote(2 * empty.next_base_fee_per_gas + PRIORITY_FEE_FLOOR_WEI,
                                      PRIORITY_FEE_FLOOR_WEI)
        dev_key = "0x" + chain._dev_key().hex()  # noqa: SLF001 - the embedded chain's funded account
        nonce = int(rpc(chain.url, "eth_getTransactionCount", [chain.dev_address, "pending"]), 16)
        for offset, tip in enumerate((3 * GWEI, 1 * GWEI, 2 * GWEI)):
            rpc(chain.url, "eth_sendRawTransaction", [signed_1559(chain.url, dev_key, nonce + offset, tip, 50 * GWEI)])
        chain.mine()
        history = rpc(chain.url, "eth_feeHistory", ["0x14", "latest", [10, 50, 90]])
        assert history["reward"][-1] == [hex(GWEI), hex(2 * GWEI), hex(3 * GWEI)]
        assert len(history["baseFeePerGas"]) == len(history["gasUsedRatio"]) + 1 == 3
        assert history["gasUsedRatio"][-1] == 3 * ETH_TRANSFER_GAS / int(chain.call("eth_getBlockByNumber",
                                                                                   ["latest"])["gasLimit"], 16)
        quotes = FeeOracle(client, clock_ms=FakeClock()).quotes()
        assert [q.max_priority_fee_per_gas for q in (quotes.slow, quotes.standard, quotes.fast)] == [
            GWEI, 2 * GWEI, 3 * GWEI]
        assert quotes.next_base_fee_per_gas == int(history["baseFeePerGas"][-1], 16)


def test_the_embedded_chain_estimates_a_token_transfer():
    artifact = json.loads((CONTRACTS / "TestToken.json").read_text())
    from eth_abi import encode

    with EmbeddedChain(block_interval_s=0) as chain:
        code = bytes.fromhex(artifact["bytecode"].removeprefix("0x")) + encode(
            ["string", "string", "uint8"], ["Test", "TT", 6])
        deployed = chain.send_transaction(None, data=code, gas=3_000_000)
        chain.mine()
        token = chain.call("eth_getTransactionReceipt", [deployed])["contractAddress"]
        mint = "0x40c10f19" + encode(["address", "uint256"], [chain.dev_address, 10**9]).hex()
        chain.send_transaction(token, data=bytes.fromhex(mint[2:]), gas=200_000)
        chain.mine()
        client = started(chain.url)
        limit = estimate_token_transfer_gas(client.session(), token, chain.dev_address, BOB, 10**6)
        sent = chain.send_transaction(token, data=bytes.fromhex(encode_transfer(BOB, 10**6)[2:]), gas=limit)
        chain.mine()
        receipt = chain.call("eth_getTransactionReceipt", [sent])
        assert receipt["status"] == "0x1" and ETH_TRANSFER_GAS < int(receipt["gasUsed"], 16) <= limit
        chain.send_transaction(CAROL, 10**18)  # gas money, but no token
        chain.mine()
        with pytest.raises(GasEstimateRefused, match="execution reverted") as refused:
            estimate_token_transfer_gas(client.session(), token, CAROL, BOB, 1)
        assert refused.value.code == 3 and client.metrics()["failures"] == 0
