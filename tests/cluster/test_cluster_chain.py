"""The whole user API on a cluster of real processes with a real chain: 2 gates, 2 transrv hosts sharing the 4
shards through etcd (2 each), the singletons (accountsrv, signsrv, blockwatch) and a standby of them waiting
for their locks, on MariaDB, Redis, etcd and anvil.

Users register through both gates, are paid by real deposits, send transfers (about half of them cross-shard,
so across hosts), a red packet, and withdrawals. The singletons' process is SIGKILLed once the first
withdrawals are signed: the standby takes over (allocator, signer, blockwatch) and signs the rest; no
withdrawal ever gets a second nonce, each is one transaction on chain, the balances are exact, and
`wallet audit` passes."""

from __future__ import annotations

import subprocess

import pytest
import requests

from devnet.anvil import DEV_KEYS, Anvil, eth_balance as chain_balance, send_eth
from storage import admins, walletkeys
from storage.db import connect_database, database_proxy
from storage.fence import owners
from storage.models import TxAttempt, Withdrawal
from tests.cluster.support import SINGLETONS, RoleProcess, log_events, wait_for_spread
from tests.conftest import ETCD_URL, make_config
from tests.helpers import wait_until
from tests.process.support import PAY_PASSWORD, WALLET, eth_balance, login, password_of, prepare

ETH = 10**18
N = 2  # confirmations
USERS = [f"user{i}" for i in range(8)]  # two per shard
DEPOSIT = ETH
WITHDRAWAL = ETH // 10
RECIPIENT = "0x000000000000000000000000000000000000dEaD"
TRANSFER_PAIRS = [(i, (i + step) % 8) for i in range(8) for step in (1, 4)]  # +4 stays on the shard


@pytest.fixture
def node():
    with Anvil() as anvil:
        yield anvil


def _with_chain(proc: RoleProcess, rpc_url: str) -> RoleProcess:
    proc.env.update(WALLET_RPC_URLS=rpc_url, WALLET_SIGNER_TICK_MS="200", WALLET_CHAIN_POLL_S="0.2",
                    WALLET_CONFIRMATIONS=str(N))
    return proc


@pytest.mark.slow
def test_the_whole_user_api_on_a_cluster_with_a_chain(node, mysql_url, redis_prefix, etcd_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix, confirmations=N, etcd_url=ETCD_URL, etcd_prefix=etcd_prefix,
                         etcd_lease_s=2)
    prepare(config, {}, pool=20)  # schema, keys, the address pool: every user registers through a gate
    connect_database(mysql_url)
    reviewer = admins.create_admin("rita", "reviewer").token
    hot = walletkeys.wallet_address("hot")
    send_eth(node.url, DEV_KEYS[0], hot, 5 * ETH)
    single = _with_chain(RoleProcess(config, tmp_path / "single.log", SINGLETONS), node.url)
    standby = _with_chain(RoleProcess(config, tmp_path / "standby.log", SINGLETONS), node.url)
    hosts = [RoleProcess(config, tmp_path / f"transrv{n}.log", "transrv") for n in range(2)]
    gates = [_with_chain(RoleProcess(config, tmp_path / f"gate{n}.log", "gate"), node.url) for n in range(2)]
    procs = [single, *hosts, *gates]
    http = requests.Session()
    try:
        for proc in procs:
            proc.start()
        procs.append(standby.start_waiting())
        for gate in gates:
            gate.wait_ready()
        wait_for_spread(gates[0], set(hosts))
        wait_until(lambda: log_events(standby, "waiting for the owner of a shard to let go"), timeout_s=30,
                   what="the standby waiting for the singletons' locks", detail=standby.log_tail)

        accounts = _register(http, gates)
        assert sorted(shard for _, shard, _ in accounts.values()) == [0, 0, 1, 1, 2, 2, 3, 3]
        tokens = _deposit(http, node, gates, accounts)

        expected = {name: DEPOSIT for name in USERS}
        cross = 0
        for n, (i, j) in enumerate(TRANSFER_PAIRS):
            sender, to = USERS[i], USERS[j]
            answer = _post(http, gates[n % 2], tokens[sender], "/api/v1/transfers", f"t{n}", {
                "to_username": to, "asset": "ETH", "amount": str(1000 + n), "pay_password": PAY_PASSWORD})
            assert answer.status_code == 201, answer.text
            expected[sender] -= 1000 + n
            expected[to] += 1000 + n
            cross += accounts[sender][1] != accounts[to][1]
        assert cross == len(TRANSFER_PAIRS) // 2

        packet = _post(http, gates[0], tokens["user0"], "/api/v1/red-packets", "rp1", {
            "asset": "ETH", "total": "400", "shares": 4, "mode": "equal", "expires_in_s": 3600,
            "pay_password": PAY_PASSWORD})
        assert packet.status_code == 201, packet.text
        expected["user0"] -= 400
        for name in USERS[1:5]:  # claimants on every shard, through the other gate
            claimed = http.post(f"{gates[1].url}/api/v1/red-packets/{packet.json()['code']}/claim", timeout=15,
                                headers={"Authorization": f"Bearer {tokens[name]}"})
            assert claimed.status_code == 200 and claimed.json()["amount"] == "100", claimed.text
            expected[name] += 100

        first = [_withdraw(http, gates[0], tokens[name], reviewer, f"w-{name}") for name in USERS[:3]]
        for name, (_, fee) in zip(USERS[:3], first):
            expected[name] -= WITHDRAWAL + fee
        wait_until(lambda: all(_status(wid) in ("signed", "broadcast", "confirmed") for wid, _ in first),
                   timeout_s=60, what="the first withdrawals signed", detail=single.log_tail)
        signer_epoch = _owner("signer")[0]
        single.kill()  # the allocator, the signer and blockwatch die with it: the standby takes them over
        wait_until(lambda: {e["owner_of"] for e in log_events(standby, "owning")} >= {"allocator", "signer"},
                   timeout_s=60, what="the standby owning the singletons", detail=standby.log_tail)
        assert _owner("signer") == (signer_epoch + 1, standby.process_id())
        second = [_withdraw(http, gates[1], tokens[name], reviewer, f"w-{name}") for name in USERS[3:6]]
        for name, (_, fee) in zip(USERS[3:6], second):
            expected[name] -= WITHDRAWAL + fee
        withdrawals = [wid for wid, _ in first + second]

        def all_confirmed() -> bool:
            node.mine(1)
            return all(_status(wid) == "confirmed" for wid in withdrawals)

        wait_until(all_confirmed, timeout_s=90, interval_s=0.3, what="every withdrawal confirmed",
                   detail=standby.log_tail)
        nonces = {wid: {a.nonce for a in TxAttempt.select().where(TxAttempt.ref_id == wid)} for wid in withdrawals}
        assert all(len(used) == 1 for used in nonces.values()), nonces  # never a second nonce
        assert sorted(next(iter(used)) for used in nonces.values()) == list(range(len(withdrawals)))
        assert int(node.rpc("eth_getTransactionCount", [hot, "latest"]), 16) == len(withdrawals)
        assert chain_balance(node.url, RECIPIENT) == len(withdrawals) * WITHDRAWAL

        def balances() -> dict[str, tuple[int, int]]:
            return {name: eth_balance(http, gates[n % 2].url, tokens[name]) for n, name in enumerate(USERS)}

        want = {name: (wei, 0) for name, wei in expected.items()}
        wait_until(lambda: balances() == want, timeout_s=30, what="the exact balances",
                   detail=lambda: f"balances: {balances()} want {want}")
        for proc in (*gates, *hosts, standby):
            assert proc.terminate() == 0, proc.log_tail()
    finally:
        for proc in procs:
            proc.ensure_stopped()
    audit = subprocess.run([WALLET, "audit"], env=gates[0].env, capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def _post(http, gate, token, path, key, body) -> requests.Response:  # noqa: ANN001
    return http.post(gate.url + path, timeout=15, json=body,
                     headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})


def _register(http, gates) -> dict[str, tuple[int, int, str]]:  # noqa: ANN001
    accounts = {}
    for n, name in enumerate(USERS):
        answer = http.post(gates[n % 2].url + "/api/v1/accounts", timeout=15, json={
            "username": name, "password": password_of(name), "pay_password": PAY_PASSWORD})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        accounts[name] = (body["account_id"], body["shard"], body["deposit_address"])
    return accounts


def _deposit(http, node, gates, accounts) -> dict[str, str]:  # noqa: ANN001
    """Each user's deposit, sent on chain and credited after N confirmations; returns their session tokens."""
    for _, _, address in accounts.values():
        send_eth(node.url, DEV_KEYS[1], address, DEPOSIT)
    tokens = {name: login(http, gates[n % 2].url, name) for n, name in enumerate(USERS)}

    def credited() -> bool:
        node.mine(1)
        return all(eth_balance(http, gates[0].url, tokens[name]) == (DEPOSIT, 0) for name in USERS)

    wait_until(credited, timeout_s=60, interval_s=0.3, what="every deposit credited")
    return tokens


def _withdraw(http, gate, token, reviewer, key) -> tuple[int, int]:  # noqa: ANN001
    """A withdrawal asked through `gate` and approved by a reviewer (admin API on the same gate); (id, fee)."""
    asked = _post(http, gate, token, "/api/v1/withdrawals", key, {
        "asset": "ETH", "to_address": RECIPIENT, "amount": str(WITHDRAWAL), "pay_password": PAY_PASSWORD,
        "speed": "standard"})
    assert asked.status_code == 202, asked.text
    withdrawal_id = int(asked.json()["id"])
    if asked.json()["status"] == "reviewing":
        approved = http.post(f"{gate.url}/admin/api/v1/withdrawals/{withdrawal_id}/approve", timeout=15,
                             headers={"Authorization": f"Bearer {reviewer}"})
        assert approved.status_code == 200, approved.text
    return withdrawal_id, int(asked.json()["fee"])


def _owner(name: str) -> tuple[int, str]:
    """(epoch, owner) of a shard's or singleton's fence."""
    (found,) = [o for o in owners(database_proxy.obj) if o.name == name]
    return found.epoch, found.owner


def _status(withdrawal_id: int) -> str:
    return Withdrawal.get_by_id(withdrawal_id).status
