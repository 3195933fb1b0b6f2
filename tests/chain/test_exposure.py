"""The node exposure check (chain/exposure.py) against real anvil (10 unlocked dev accounts, anvil_*/hardhat_*
answered), the embedded chain (nothing exposed), and a BadNode that records every call: the probes are exactly
the harmless ones, once each, never a signing, sending, unlocking or state-changing call; answers of other
node kinds (a geth-like personal/miner namespace, a gateway's refusal) are read right; a dead node costs one
call and is reported unknown; a URL's API key never reaches a result or a log line."""

from __future__ import annotations

import logging
import re

import pytest

from chain.embedded import EmbeddedChain
from chain.exposure import NAMESPACE_PROBES, NodeExposure, exposure_report, probe_node
from devnet.anvil import DEV_ADDRESSES, Anvil, BadNode, Fault

PROBE_METHODS = {"eth_accounts", *(method for method, _ in NAMESPACE_PROBES.values())}
# what must never be called: anything that signs, sends, unlocks, imports or creates keys, or changes state
FORBIDDEN = re.compile(r"sign|send|unlock|lock|import|newaccount|start|stop|set|mine|impersonate|drop|revert|snapshot",
                       re.IGNORECASE)


class RecordingNode(BadNode):
    """A BadNode that also keeps every call's method and params."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[tuple[str, list]] = []

    def _faults_for(self, items):
        self.requests.extend((item.get("method", ""), item.get("params", [])) for item in items)
        return super()._faults_for(items)


@pytest.fixture(scope="module")
def anvil():
    with Anvil() as node:
        yield node


def assert_only_harmless_probes(node: RecordingNode) -> None:
    methods = [method for method, _ in node.requests]
    assert set(methods) <= PROBE_METHODS and len(methods) == len(set(methods))  # each at most once
    for method, params in node.requests:
        assert params == [], (method, params)  # miner_setExtra without its one argument can set nothing
        assert method == "miner_setExtra" or not FORBIDDEN.search(method), method


def test_anvil_shows_its_unlocked_accounts_and_test_namespaces(anvil):
    head = anvil.head()
    with RecordingNode(anvil.url) as proxy:
        report = probe_node(proxy.url, 2.0)
        assert_only_harmless_probes(proxy)
        assert sorted(m for m, _ in proxy.requests) == sorted(PROBE_METHODS)
    assert report == NodeExposure(f"#0 http://127.0.0.1:{proxy.port}", 10, ("anvil", "hardhat"), ())
    assert report.exposed and report.complete
    # anvil serves personal_sign (never probed) but no personal_listAccounts, admin_* or miner_*
    assert anvil.head() == head  # nothing was mined or changed


def test_the_embedded_chain_exposes_nothing():
    with EmbeddedChain(block_interval_s=0) as chain:
        report = probe_node(chain.url, 2.0, index=1)
    assert report == NodeExposure(report.url_label, 0, (), ()) and report.url_label.startswith("#1 http://127.0.0.1:")
    assert not report.exposed and report.complete
    assert report.describe().endswith("no unlocked account, no admin namespace")


def test_other_nodes_answers_are_read_right(anvil):
    """A geth-like node: personal_listAccounts answers, miner_setExtra refuses the missing argument (-32602: the
    namespace is there); a gateway refuses admin_nodeInfo under another code; eth_accounts is empty."""
    with RecordingNode(anvil.url) as node:
        node.set_fault("eth_accounts", Fault("result", value=[]))
        node.set_fault("personal_listAccounts", Fault("result", value=[DEV_ADDRESSES[0]]))
        node.set_fault("miner_setExtra", Fault("error", code=-32602, message="missing value for required argument 0"))
        node.set_fault("admin_nodeInfo", Fault("error", code=-32600, message="Unsupported method: admin_nodeInfo"))
        node.set_fault("anvil_nodeInfo", Fault("error", code=-32601, message="the method does not exist"))
        node.set_fault("hardhat_metadata", Fault("error", code=-32000, message="internal failure"))
        report = probe_node(node.url, 2.0)
        assert_only_harmless_probes(node)
    assert (report.unlocked_accounts, report.exposed_namespaces) == (0, ("personal", "miner", "hardhat"))


def test_a_node_without_any_of_it_is_clean_and_a_dead_one_is_unknown_after_one_call():
    with RecordingNode() as bare:  # answers eth_chainId/eth_blockNumber only, -32601 to the rest
        clean = probe_node(bare.url, 2.0)
        assert_only_harmless_probes(bare)
    assert clean.unlocked_accounts == 0 and clean.exposed_namespaces == () and clean.complete
    with RecordingNode() as dead:
        dead.set_fault("*", Fault("drop"))
        unknown = probe_node(dead.url, 2.0)
        assert [m for m, _ in dead.requests] == ["eth_accounts"]
    assert not unknown.exposed and not unknown.complete and set(unknown.unanswered) == PROBE_METHODS
    assert "not answered: eth_accounts" in unknown.describe()


def test_the_report_logs_each_node_by_label_never_its_url(anvil, caplog):
    secret = "k3y-0123456789abcdef"
    with RecordingNode(anvil.url) as exposed, RecordingNode() as clean:
        with caplog.at_level(logging.INFO, logger="chain.exposure"):
            reports = exposure_report([f"{exposed.url}/v3/{secret}", f"{clean.url}/?apikey={secret}"], 2.0)
        assert_only_harmless_probes(exposed)
        assert_only_harmless_probes(clean)
    assert [r.url_label for r in reports] == [f"#0 http://127.0.0.1:{exposed.port}",
                                             f"#1 http://127.0.0.1:{clean.port}"]
    assert reports[0].exposed and not reports[1].exposed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].node == reports[0].url_label
    assert "10 unlocked accounts" in warnings[0].detail and "anvil_*" in warnings[0].detail
    for record in caplog.records:
        assert secret not in record.getMessage() and secret not in str(record.__dict__)
    assert all(secret not in repr(r) for r in reports)


def test_the_forbidden_pattern_catches_what_it_must():
    for method in ("eth_sign", "eth_signTypedData_v4", "personal_sign", "eth_sendTransaction", "personal_unlockAccount",
                   "personal_importRawKey", "personal_newAccount", "miner_start", "anvil_setBalance",
                   "anvil_impersonateAccount", "evm_mine", "evm_snapshot"):
        assert FORBIDDEN.search(method), method
    assert [m for m in PROBE_METHODS if FORBIDDEN.search(m)] == ["miner_setExtra"]  # called with no argument only
