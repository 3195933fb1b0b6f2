"""ChainClient against real anvil nodes: batched reads, chain id check, failover (node dies, node lags), bad
node answers, bounded retries, raw transaction broadcast."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import pytest
import requests

from chain.nodes import ChainClient
from chain.erc20 import TRANSFER_TOPIC, decode_transfer
from chain.errors import (ChainIdMismatch, FatalChainError, NoHealthyNode, RetriableChainError,
                          TransactionRejected)
from chain.types import parse_block, parse_receipt
from devnet.anvil import (DEV_ADDRESSES, DEV_KEYS, Anvil, BadNode, Fault, TcpProxy, deploy_token, free_port,
                               rpc, send_eth, sign_tx, token_balance, token_mint, token_transfer)
from tests.helpers import wait_until

ALICE, BOB, CAROL = DEV_ADDRESSES[1], DEV_ADDRESSES[2], DEV_ADDRESSES[3]


@pytest.fixture(scope="module")
def funded():
    """One automining anvil with a token and a few ETH and token transfers; read-only for the tests."""
    with Anvil() as node:
        token = deploy_token(node.url, DEV_KEYS[0])
        txs = [token_mint(node.url, token, DEV_KEYS[0], ALICE, 10**21),
               token_transfer(node.url, token, DEV_KEYS[1], BOB, 250),
               send_eth(node.url, DEV_KEYS[0], CAROL, 10**17),
               token_transfer(node.url, token, DEV_KEYS[1], CAROL, 7)]
        node.mine(2)  # empty blocks too
        yield node, token, txs


def started(urls, **options) -> ChainClient:
    client = ChainClient(urls, **options)
    client.start()
    return client


def test_anvil_restart_keeps_port_and_chain():
    with Anvil(state=True) as node:
        node.mine(3)
        port, block = node.port, node.block(3)
        node.restart()
        assert node.port == port and node.block(3) == block and node.head() == 3
        node.kill()
        with pytest.raises(requests.ConnectionError):
            node.head()


def test_dev_keys_are_anvils_accounts(funded):
    node, _, _ = funded
    assert [a.lower() for a in node.rpc("eth_accounts")[:len(DEV_ADDRESSES)]] == [a.lower() for a in DEV_ADDRESSES]


def test_batched_blocks_equal_single_fetches(funded):
    node, _, _ = funded
    client = started([node.url], expected_chain_id=31337, batch_size=2)  # 2 per batch: chunks are stitched
    session = client.session()
    head = session.head()
    numbers = list(range(head, -1, -1))  # any order is kept
    batched = session.blocks(numbers, full=True)
    singles = [parse_block(node.block(n, full=True), full=True) for n in numbers]
    assert batched == singles
    assert [b.number for b in batched] == numbers
    light = session.blocks(numbers, full=False)
    assert [b.tx_hashes for b in light] == [b.tx_hashes for b in batched]
    assert session.block_by_hash(batched[1].hash) == batched[1]
    assert session.block_by_hash("0x" + "00" * 32) is None
    client.close()


def test_batched_receipts_and_logs_equal_single_fetches(funded):
    node, token, txs = funded
    client = started([node.url], batch_size=3)
    session = client.session()
    receipts = session.receipts(txs)
    assert receipts == [parse_receipt(rpc(node.url, "eth_getTransactionReceipt", [h])) for h in txs]
    assert [r.status for r in receipts] == [1, 1, 1, 1]
    assert receipts[2].logs == () and receipts[2].gas_used == 21000
    assert session.receipt(txs[0]) == receipts[0]
    assert session.receipt("0x" + "00" * 32) is None

    logs = session.logs(0, session.head(), [token], [TRANSFER_TOPIC])
    assert [decode_transfer(log) for log in logs] == [
        ("0x0000000000000000000000000000000000000000", ALICE, 10**21), (ALICE, BOB, 250), (ALICE, CAROL, 7)]
    assert logs == [log for r in receipts for log in r.logs]
    per_block = [log for r in receipts for log in session.block_logs(r.block_hash, [token], [TRANSFER_TOPIC])]
    assert per_block == logs
    assert token_balance(node.url, token, ALICE) == 10**21 - 257
    client.close()


def test_chain_id_mismatch_is_refused_at_start():
    with Anvil(chain_id=31337) as one, Anvil(chain_id=1337) as other:
        with pytest.raises(ChainIdMismatch, match="1337"):
            ChainClient([one.url, other.url]).start()
        with pytest.raises(ChainIdMismatch, match="expected chain id 5"):
            ChainClient([one.url], expected_chain_id=5).start()
        assert ChainClient([other.url], expected_chain_id=1337).start() == 1337


def test_node_down_at_start_is_checked_when_it_answers(caplog):
    with Anvil(chain_id=31337) as good, Anvil(chain_id=1337) as wrong, TcpProxy(wrong.port) as proxy:
        proxy.kill()
        client = started([proxy.url, good.url], expected_chain_id=31337)
        assert client.active_url == good.url
        proxy.restore()
        with caplog.at_level(logging.ERROR, logger="chain.nodes"):
            client.refresh()
        assert client.active_url == good.url  # the primary serves chain 1337: never used
        assert client.metrics()["nodes"][0]["refused"] is True
        assert any(r.msg == "chain node refused" and "1337" in r.reason for r in caplog.records)
        client.close()


@pytest.fixture
def two_proxies():
    """One anvil behind two proxies: a primary and a standby that see the same chain."""
    with Anvil() as node, TcpProxy(node.port) as primary, TcpProxy(node.port) as standby:
        yield node, primary, standby


def test_failover_when_primary_dies_mid_scan_and_back(two_proxies, caplog):
    node, primary, standby = two_proxies
    node.mine(5)
    client = started([primary.url, standby.url], retries=1, cooldown_s=0.0)
    assert client.active_url == primary.url and client.metrics()["switch_count"] == 0

    session = client.session()
    first = session.blocks([1, 2])
    primary.kill()  # the node host vanishes between two reads of one step
    with caplog.at_level(logging.WARNING, logger="chain.nodes"):
        with pytest.raises(RetriableChainError, match="failed 2 times"):
            session.blocks([3, 4])
    with pytest.raises(RetriableChainError, match="abandoned"):
        session.head()  # the step is over: no read continues on a node given up on
    assert client.active_url == standby.url
    metrics = client.metrics()
    assert metrics["switch_count"] == 1 and metrics["failures"] == 1
    assert "unhealthy" in metrics["last_switch_reason"]
    switch = [r for r in caplog.records if r.msg == "chain node switch"][-1]
    assert switch.from_node.startswith("#0") and switch.to_node.startswith("#1") and "refused" in switch.reason

    retry = client.session()  # next tick: the whole step again, on the standby
    assert retry.url == standby.url
    assert retry.blocks([1, 2]) == first and len(retry.blocks([3, 4])) == 2

    client.refresh()  # primary still down: stays on the standby
    assert client.active_url == standby.url
    primary.restore()
    client.refresh()
    assert client.active_url == primary.url
    assert client.metrics()["switch_count"] == 2
    when, from_url, to_url, reason = client.switches[-1]
    assert (from_url, to_url) == (standby.url, primary.url) and "caught up" in reason
    client.close()


def test_failed_node_cools_down_before_it_is_used_again(two_proxies):
    _, primary, standby = two_proxies
    client = started([primary.url, standby.url], retries=0, cooldown_s=60.0)
    session = client.session()
    primary.kill()
    with pytest.raises(RetriableChainError):
        session.head()
    primary.restore()
    client.refresh()  # answers again, but it just failed a read: not trusted yet
    assert client.active_url == standby.url
    assert client.metrics()["nodes"][0]["reason"].startswith("eth_blockNumber failed 1 times")
    client.close()


def test_switch_when_primary_lags_and_back_when_caught_up():
    with Anvil(no_mining=True) as behind, Anvil(no_mining=True) as ahead:
        client = started([behind.url, ahead.url], max_lag_blocks=3)
        assert client.active_url == behind.url
        ahead.mine(3)
        client.refresh()  # 3 behind is allowed
        assert client.active_url == behind.url
        pinned = client.session()
        ahead.mine(1)
        client.refresh()
        assert client.active_url == ahead.url
        assert pinned.url == behind.url and pinned.head() == 0  # an open step stays on its node
        assert client.heads == {behind.url: 0, ahead.url: 4}
        assert "lags: head 0 is more than 3 blocks behind 4" in client.metrics()["last_switch_reason"]
        behind.mine(1)
        client.refresh()
        assert client.active_url == behind.url
        assert client.metrics()["switch_count"] == 2
        client.close()


def test_no_healthy_node():
    with Anvil() as node, TcpProxy(node.port) as proxy:
        client = started([proxy.url], retries=0)
        proxy.kill()
        client.refresh()
        assert client.active_url is None
        with pytest.raises(NoHealthyNode, match="health check failed"):
            client.session()
        proxy.restore()
        client.refresh()
        assert client.session().head() == 0
        client.close()
    with pytest.raises(NoHealthyNode):
        ChainClient(["http://127.0.0.1:9"]).start()


# --- a node that answers wrongly ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_chain():
    with Anvil() as node:
        send_eth(node.url, DEV_KEYS[0], ALICE, 5)
        node.mine(3)
        with BadNode(node.url) as bad:
            yield node, bad


@pytest.fixture
def bad(bad_chain):
    node, bad = bad_chain
    bad.clear_faults()
    bad.reset_counts()
    return node, bad


BLOCK_FAULTS = [
    (Fault("error", code=-32000, message="header not found"), "header not found"),
    (Fault("error", code=-32603, message="internal"), "internal"),
    (Fault("null"), "block 2 not available"),
    (Fault("garbage"), "not JSON"),
    (Fault("http", status=503), "HTTP 503"),
    (Fault("drop"), "request failed"),
    (Fault("patch", fields={"parentHash": "0x1234"}), "parentHash"),
    (Fault("patch", fields={"parentHash": "0x" + "ab" * 32}), "block 3 does not link to block 2"),
    (Fault("patch", fields={"number": "0x7"}), "asked block 2, got 7"),
    (Fault("patch", fields={"hash": None}), "hash"),
    (Fault("result", value="0x1"), "expected an object"),
]


@pytest.mark.parametrize("fault, message", BLOCK_FAULTS, ids=[f"{f.kind}-{m}" for f, m in BLOCK_FAULTS])
def test_bad_block_answers_are_retried_a_bounded_number_of_times(bad, fault, message):
    node, bad_node = bad
    client = started([bad_node.url, node.url], retries=2, timeout_s=2.0)
    session = client.session()
    bad_node.set_fault("eth_getBlockByNumber", fault)
    with pytest.raises(RetriableChainError, match=message):
        session.blocks([2, 3])
    assert bad_node.calls["eth_getBlockByNumber"] == 3 * 2  # 3 attempts of one batch of 2
    assert client.active_url == node.url  # failed over, never returned a wrong block
    assert client.session().blocks([1]) == [parse_block(node.block(1, full=True), full=True)]
    client.close()


def test_a_wrong_parent_of_the_right_shape_is_reported_as_is(bad):
    """A lone block whose parent differs from what the caller stored is a reorg to the block watcher: the
    client must hand it over faithfully, not hide it."""
    node, bad_node = bad
    client = started([bad_node.url])
    bad_node.set_fault("eth_getBlockByNumber", Fault("patch", fields={"parentHash": "0x" + "AB" * 32}))
    block = client.session().blocks([2])[0]
    assert block.parent_hash == "0x" + "ab" * 32 and block.hash == node.block(2)["hash"]
    client.close()


def test_a_transient_fault_is_absorbed_by_a_retry(bad):
    node, bad_node = bad
    client = started([bad_node.url, node.url], retries=2)
    bad_node.set_fault("eth_getTransactionReceipt", Fault("null", times=1))
    tx_hash = node.block(1)["transactions"][0]
    receipt = client.session().receipts([tx_hash])[0]
    assert (receipt.tx_hash, receipt.status) == (tx_hash, 1)
    assert bad_node.calls["eth_getTransactionReceipt"] == 2
    assert client.active_url == bad_node.url and client.metrics()["switch_count"] == 0
    client.close()


@pytest.mark.parametrize("code", [-32602, -32601, -32600])
def test_a_request_the_node_calls_invalid_is_fatal_without_retry(bad, code):
    node, bad_node = bad
    client = started([bad_node.url, node.url], retries=3)
    bad_node.set_fault("eth_getLogs", Fault("error", code=code, message="invalid"))
    with pytest.raises(FatalChainError) as raised:
        client.session().logs(0, 3, [ALICE], [TRANSFER_TOPIC])
    assert raised.value.code == code and bad_node.calls["eth_getLogs"] == 1
    assert client.active_url == bad_node.url  # the request is wrong, not the node
    client.close()


def test_logs_outside_the_filter_are_refused(bad):
    node, bad_node = bad
    client = started([bad_node.url], retries=0)
    fake = {"address": BOB, "topics": [TRANSFER_TOPIC], "data": "0x", "blockNumber": "0x9",
            "blockHash": "0x" + "11" * 32, "transactionHash": "0x" + "22" * 32, "logIndex": "0x0", "removed": False}
    bad_node.set_fault("eth_getLogs", Fault("result", value=[fake]))
    with pytest.raises(RetriableChainError, match="log outside the filter"):
        client.session().logs(0, 3, [ALICE], [TRANSFER_TOPIC])
    client.close()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port that takes connections (the kernel queues them) and never answers: a node that hangs. A read from
    it times out however loaded the machine is, where a node that only answers late may still win the race."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_slow_node_times_out(two_proxies):
    _, primary, standby = two_proxies
    client = started([primary.url, standby.url], retries=1, timeout_s=2.0)
    with silent_port() as hung:
        primary.retarget(hung)  # the primary's host stops answering; its open connections are reset
        connections = primary.connections
        with pytest.raises(RetriableChainError, match="failed 2 times: timeout after 2.0s"):
            client.session().blocks([0])
        wait_until(lambda: primary.connections - connections == 2, what="both attempts at the silent node")
    assert client.active_url == standby.url
    client.close()


def test_garbage_health_answer_marks_node_down(bad):
    node, bad_node = bad
    client = started([bad_node.url, node.url])
    bad_node.set_fault("eth_blockNumber", Fault("result", value="latest"))
    client.refresh()
    assert client.active_url == node.url
    assert "not a hex quantity" in client.metrics()["nodes"][0]["reason"]
    client.close()


# --- broadcasting -------------------------------------------------------------------------------------------

def test_send_raw_transaction_is_idempotent_and_refusals_are_fatal():
    with Anvil(no_mining=True) as node:
        client = started([node.url])
        session = client.session()
        raw, tx_hash = sign_tx(node.url, DEV_KEYS[0], to=BOB, value=10**15, gas=21000)
        raw_bytes = bytes.fromhex(raw[2:])
        assert session.send_raw_transaction(raw_bytes) == tx_hash
        assert session.send_raw_transaction(raw_bytes) == tx_hash  # "already known" = sent
        node.mine(1)
        assert session.receipt(tx_hash).status == 1
        with pytest.raises(TransactionRejected, match="nonce too low") as raised:
            session.send_raw_transaction(raw_bytes)
        assert raised.value.reason == "nonce too low"
        with pytest.raises(TransactionRejected):
            session.send_raw_transaction(b"\x01\x02")
        assert client.active_url == node.url and client.metrics()["failures"] == 0
        client.close()


def test_metrics_name_the_active_node_without_its_url(two_proxies):
    from prometheus_client import CollectorRegistry, generate_latest

    from chain.metrics import chain_metric_families

    _, primary, standby = two_proxies
    client = started([primary.url.replace("//", "//wallet:secret-api-key@"), standby.url], retries=0)
    assert client.active_url.endswith(f"secret-api-key@127.0.0.1:{primary.port}")
    primary.kill()
    with pytest.raises(RetriableChainError):
        client.session().head()

    class Collector:
        def collect(self):
            return chain_metric_families(client.metrics())

    registry = CollectorRegistry()
    registry.register(Collector())
    text = generate_latest(registry).decode()
    assert "secret-api-key" not in text
    assert f'wallet_chain_node_active{{node="#1 http://127.0.0.1:{standby.port}"}} 1.0' in text
    assert f'wallet_chain_node_active{{node="#0 http://127.0.0.1:{primary.port}"}} 0.0' in text
    assert "wallet_chain_node_switches_total 1.0" in text and "wallet_chain_read_failures_total 1.0" in text
    client.close()


def test_errors_name_nodes_without_the_secret_in_their_url():
    with pytest.raises(NoHealthyNode) as raised:
        ChainClient([f"http://127.0.0.1:{free_port()}/v3/SECRET-API-KEY"]).start()
    assert "SECRET" not in str(raised.value) and "Connection refused" in str(raised.value)


# --- the public calls BlockWatch uses ---------------------------------------------------------------------

def test_fail_reports_the_node_abandons_the_session_and_switches(two_proxies):
    _, primary, standby = two_proxies
    client = started([primary.url, standby.url], cooldown_s=60.0)
    session = client.session()
    session.fail("block 7 names parent 0xab, but the node's block 6 is 0xcd")
    with pytest.raises(RetriableChainError, match="abandoned: block 7 names parent"):
        session.head()
    assert client.active_url == standby.url
    metrics = client.metrics()
    assert metrics["failures"] == 1 and metrics["nodes"][0]["reason"].startswith("block 7 names parent")
    client.refresh()  # answers health checks, but reported bad: cools down
    assert client.active_url == standby.url
    client.close()


def test_missing_receipts_are_none_when_asked_and_never_fail_the_node_over(bad):
    node, bad_node = bad
    client = started([bad_node.url, node.url], retries=2)
    tx_hash = node.block(1)["transactions"][0]
    unknown = "0x" + "00" * 32
    session = client.session()
    found, missing = session.receipts([tx_hash, unknown], missing_ok=True)
    assert (found.tx_hash, found.status, missing) == (tx_hash, 1, None)
    assert bad_node.calls["eth_getTransactionReceipt"] == 2  # one batch of 2, not retried
    assert client.active_url == bad_node.url and client.metrics()["failures"] == 0
    with pytest.raises(RetriableChainError, match=f"receipt of {unknown} not available"):
        session.receipts([unknown])  # the strict call still treats it as the node's fault
    assert client.active_url == node.url
    client.close()


def test_one_missed_health_check_of_a_node_serving_reads_is_forgiven_not_two(two_proxies):
    # A miss here is a refused connection, not a late answer: a refusal is a miss on any machine, where a short
    # timeout raced against a delay is not. The grace is long for the same reason.
    _, primary, standby = two_proxies
    client = started([primary.url, standby.url], health_grace_s=600.0)
    primary.kill()
    client.refresh()  # no real read yet: nothing to forgive
    assert client.active_url == standby.url
    primary.restore()
    client.refresh()
    assert client.active_url == primary.url and client.metrics()["switch_count"] == 2

    client.session().head()  # a real read answered just now
    primary.kill()  # unreachable for a moment, or too busy to answer
    client.refresh()
    assert client.active_url == primary.url and client.metrics()["switch_count"] == 2
    primary.restore()
    client.refresh()  # answers again: the miss is forgotten
    primary.kill()
    client.refresh()
    assert client.active_url == primary.url
    client.refresh()  # two in a row: down
    assert client.active_url == standby.url
    reason = client.metrics()["nodes"][0]["reason"]
    assert reason.startswith("health check failed") and "Connection refused" in reason
    client.close()
