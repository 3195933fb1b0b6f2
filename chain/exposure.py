"""What a node exposes that it should not: unlocked accounts, and namespaces that must never be reachable from
outside (`personal_*` holds and unlocks keys, `admin_*` manages the node, `miner_*` changes what it builds;
test nodes add `anvil_*`/`hardhat_*`, which rewrite balances and impersonate accounts).

The service never lets a node hold or use a key: it signs offline and sends raw bytes. A node that holds
unlocked accounts or serves these namespaces is a node anyone who reaches it can steal through, so the service
checks each node it is given at start and warns loudly (the caller turns a `NodeExposure` into a log line, a
metric and a /readyz detail).

Each probe is a call that cannot do anything, whatever the node:
- `eth_accounts` (read-only): how many accounts the node would sign for;
- `personal_listAccounts` (read-only; geth up to 1.13, Nethermind, OpenEthereum);
- `admin_nodeInfo` (read-only; geth, Nethermind, Besu, Erigon);
- `miner_setExtra` with NO parameter: miner_* has no read-only method in geth, and a call without its one
  required argument is refused as invalid params (-32602) before anything runs, which proves the namespace is
  there without setting a thing;
- `anvil_nodeInfo`, `hardhat_metadata` (read-only, test nodes).
A result, or an error other than "method not found" (e.g. -32602 invalid params), means the namespace answers.
"Method not found" (-32601), or a refusal saying the method is not available/allowed (as providers' gateways
answer), means it does not. Nothing that could sign, send, unlock or change state is ever called (tests prove
it with a node that counts every call): no eth_sign*, personal_sign, eth_sendTransaction, *_unlockAccount, ...

A node that does not answer at all (down, timeout, garbage) leaves its exposure unknown: the probe stops at the
first unanswered call and names it in `unanswered`. URLs may carry API keys: results and logs name a node by
its label (`#0 https://host`), never by its URL.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from chain.errors import ChainError
from chain.nodes import node_label
from chain.transport import Transport
from core.limits import EXPOSURE_PROBE_CALLS_MAX, EXPOSURE_PROBE_TIMEOUT_S

log = logging.getLogger(__name__)

# namespace -> (method, params): harmless whatever the node (see the module's docstring)
NAMESPACE_PROBES: dict[str, tuple[str, list]] = {
    "personal": ("personal_listAccounts", []),
    "admin": ("admin_nodeInfo", []),
    "miner": ("miner_setExtra", []),
    "anvil": ("anvil_nodeInfo", []),
    "hardhat": ("hardhat_metadata", []),
}
METHOD_NOT_FOUND, INVALID_PARAMS = -32601, -32602
# how gateways that filter methods say "not here" under another code (-32600, -32000, -32004, ...)
_REFUSALS = ("not found", "not available", "not supported", "unsupported", "does not exist", "not allowed",
             "not whitelisted", "disabled", "forbidden", "unauthorized", "method not")

assert len(NAMESPACE_PROBES) + 1 <= EXPOSURE_PROBE_CALLS_MAX


@dataclasses.dataclass(frozen=True)
class NodeExposure:
    url_label: str
    unlocked_accounts: int
    exposed_namespaces: tuple[str, ...]
    unanswered: tuple[str, ...] = ()  # probes without an answer: the exposure they check is unknown

    @property
    def exposed(self) -> bool:
        return self.unlocked_accounts > 0 or bool(self.exposed_namespaces)

    @property
    def complete(self) -> bool:
        return not self.unanswered

    def describe(self) -> str:
        """One line for the log and /readyz: what is exposed, or that nothing is, or what is unknown."""
        parts = []
        if self.unlocked_accounts:
            parts.append(f"{self.unlocked_accounts} unlocked accounts (eth_accounts)")
        if self.exposed_namespaces:
            parts.append("reachable namespaces: " + ", ".join(f"{ns}_*" for ns in self.exposed_namespaces))
        if self.unanswered:
            parts.append("not answered: " + ", ".join(self.unanswered))
        return f"{self.url_label}: " + ("; ".join(parts) if parts else "no unlocked account, no admin namespace")


def probe_node(url: str, timeout_s: float = EXPOSURE_PROBE_TIMEOUT_S, *, index: int = 0,
               transport: Transport | None = None) -> NodeExposure:
    """Probe one node (see the module's docstring). At most EXPOSURE_PROBE_CALLS_MAX calls of `timeout_s` each;
    a node that does not answer the first costs one timeout. `index` is the node's place in WALLET_RPC_URLS,
    for its label."""
    label = node_label(index, url)
    own = transport is None
    transport = transport or Transport(timeout_s)
    try:
        try:
            accounts = transport.request(url, "eth_accounts", [], timeout_s)
        except ChainError as exc:
            if exc.code is None:  # no answer: the node is down or not a node; the rest would not answer either
                return NodeExposure(label, 0, (), ("eth_accounts", *(m for m, _ in NAMESPACE_PROBES.values())))
            accounts = []  # an error answer (a gateway without eth_accounts): it signs for nobody
        unlocked = len(accounts) if isinstance(accounts, list) else 0
        exposed, unanswered = [], []
        for namespace, (method, params) in NAMESPACE_PROBES.items():
            answered = _answers(transport, url, method, params, timeout_s)
            if answered is None:
                unanswered.append(method)
            elif answered:
                exposed.append(namespace)
        return NodeExposure(label, unlocked, tuple(exposed), tuple(unanswered))
    finally:
        if own:
            transport.close()


def exposure_report(urls: Sequence[str], timeout_s: float = EXPOSURE_PROBE_TIMEOUT_S) -> list[NodeExposure]:
    """Probe every configured node (WALLET_RPC_URLS order) and log each one: a warning for an exposed node, a
    warning for one whose exposure is unknown, info otherwise. Never raises for a node's sake."""
    transport = Transport(timeout_s)
    try:
        reports = [probe_node(url, timeout_s, index=i, transport=transport) for i, url in enumerate(urls)]
    finally:
        transport.close()
    for report in reports:
        extra = {"node": report.url_label, "unlocked_accounts": report.unlocked_accounts,
                 "exposed_namespaces": ",".join(report.exposed_namespaces), "unanswered": ",".join(report.unanswered)}
        if report.exposed:
            log.warning("chain node exposes keys or admin namespaces: anyone who reaches it can use them; "
                        "close them (see README)", extra={**extra, "detail": report.describe()})
        elif not report.complete:
            log.warning("chain node exposure unknown: some probes got no answer", extra={**extra,
                                                                                      "detail": report.describe()})
        else:
            log.info("chain node exposes no keys or admin namespaces", extra=extra)
    return reports


def _answers(transport: Transport, url: str, method: str, params: list, timeout_s: float) -> bool | None:
    """True: the method is served (a result, or an error that is not a refusal); False: not served; None: no
    answer at all."""
    try:
        transport.request(url, method, params, timeout_s)
    except ChainError as exc:
        if exc.code is None:
            return None
        if exc.code == METHOD_NOT_FOUND:
            return False
        if exc.code == INVALID_PARAMS:  # the method is there: it parsed our call and refused its arguments
            return True
        message = exc.rpc_message.lower()
        return not any(refusal in message for refusal in _REFUSALS)
    return True
