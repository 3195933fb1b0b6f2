"""Membership across real processes: transrv hosts registered in etcd share the shards evenly, a host that
joins takes its share from the others (handed over cleanly: epoch + 1, nothing lost), one that stops gives
them back; and while etcd is down (then restarted) no shard moves and the service goes on."""

from __future__ import annotations

import subprocess
import time

import pymysql
import pytest
import requests

from storage.db import mysql_params
from tests.cluster.support import (
    SINGLETONS, EtcdServer, RoleProcess, console_cluster, console_health, log_events, wait_for_spread,
)
from tests.cluster.test_takeover import _transfer_until_answered
from tests.conftest import ETCD_URL, make_config
from tests.helpers import wait_until
from tests.process.support import WALLET, eth_balance, login, prepare

FUNDS = 10**15
PAYEES = ("bob", "carol", "dave", "erin", "frank")
LEASE_S = 2


def _epochs(url: str) -> dict[str, int]:
    db = pymysql.connect(**mysql_params(url))
    with db.cursor() as cursor:
        cursor.execute("SELECT name, epoch FROM shard_owner WHERE name LIKE 'shard-%%'")
        epochs = dict(cursor.fetchall())
    db.close()
    return epochs


class _Payer:
    """alice pays 1000 wei to each payee in turn through the gate, retrying each key until it is answered."""

    def __init__(self, gate: RoleProcess) -> None:
        self.gate, self.http = gate, requests.Session()
        self.token = login(self.http, gate.url, "alice")
        self.sent = 0

    def pay_round(self, tag: str) -> None:
        for to in PAYEES:
            _transfer_until_answered(self.http, self.gate, self.token, to, f"{tag}-{to}")
            self.sent += 1

    def assert_exact(self, config) -> None:
        assert eth_balance(self.http, self.gate.url, self.token) == (FUNDS - 1000 * self.sent, 0)
        received = sum(eth_balance(self.http, self.gate.url, login(self.http, self.gate.url, name))[0]
                       for name in PAYEES)
        assert received == 1000 * self.sent
        audit = subprocess.run([WALLET, "audit"], env=self.gate.env, capture_output=True, text=True, timeout=60)
        assert audit.returncode == 0, audit.stdout + audit.stderr


def _moves(proc: RoleProcess) -> int:
    return len(log_events(proc, "took a shard")) + len(log_events(proc, "handed a shard over"))


@pytest.mark.slow
def test_a_joining_host_takes_its_share_and_a_leaving_one_gives_it_back(mysql_url, redis_prefix, etcd_prefix,
                                                                         tmp_path):
    config = make_config(mysql_url, redis_prefix, etcd_url=ETCD_URL, etcd_prefix=etcd_prefix, etcd_lease_s=LEASE_S)
    prepare(config, {"alice": FUNDS, **{name: 0 for name in PAYEES}})
    single = RoleProcess(config, tmp_path / "single.log", SINGLETONS)
    host_a = RoleProcess(config, tmp_path / "a.log", "transrv")
    host_b = RoleProcess(config, tmp_path / "b.log", "transrv")
    gate = RoleProcess(config, tmp_path / "gate.log", "gate")
    procs = [single, host_a, gate]
    try:
        for proc in procs:
            proc.start()
        gate.wait_ready()
        assert wait_for_spread(gate, {host_a}) == {host_a.process_id(): (0, 1, 2, 3)}
        payer = _Payer(gate)
        payer.pay_round("alone")

        procs.append(host_b.start())
        spread = wait_for_spread(gate, {host_a, host_b})
        assert sorted(len(shards) for shards in spread.values()) == [2, 2]
        moved = spread[host_b.process_id()]
        assert {int(e["shard"]) for e in log_events(host_a, "handed a shard over")} == set(moved)
        payer.pay_round("shared")  # across both hosts
        # One clean hand-over per moved shard: the new owner's epoch is the next one, the others kept theirs.
        assert _epochs(mysql_url) == {f"shard-{s}": 2 if s in moved else 1 for s in range(4)}
        # The console shows the map: etcd's members beside the owners by the fences.
        members, owners = console_cluster(console_health(gate))
        for host in (host_a, host_b):
            assert members[host.process_id()] == ("transrv", ", ".join(map(str, spread[host.process_id()])))
        assert set(members) == {p.process_id() for p in procs}
        assert {name: owner for name, owner in owners.items() if name.startswith("shard-")} == {
            f"shard-{s}": (2, host_b.process_id()) if s in moved else (1, host_a.process_id()) for s in range(4)}
        assert {owners[name][1] for name in ("allocator", "signer", "blockwatch")} == {single.process_id()}

        assert host_b.terminate() == 0, host_b.log_tail()  # revokes its lease: A takes the shards back at once
        wait_for_spread(gate, {host_a})
        payer.pay_round("back")
        assert _epochs(mysql_url) == {f"shard-{s}": 3 if s in moved else 1 for s in range(4)}
        payer.assert_exact(config)
        for proc in (gate, host_a, single):
            assert proc.terminate() == 0, proc.log_tail()
    finally:
        for proc in procs:
            proc.ensure_stopped()


@pytest.mark.slow
def test_no_shard_moves_while_etcd_is_down_or_restarting(mysql_url, redis_prefix, etcd_prefix, tmp_path):
    etcd = EtcdServer(tmp_path / "etcd-data").start()  # its own: this test stops it
    config = make_config(mysql_url, redis_prefix, etcd_url=etcd.url, etcd_prefix=etcd_prefix, etcd_lease_s=LEASE_S)
    prepare(config, {"alice": FUNDS, **{name: 0 for name in PAYEES}})
    single = RoleProcess(config, tmp_path / "single.log", SINGLETONS)
    hosts = [RoleProcess(config, tmp_path / f"host{n}.log", "transrv") for n in range(2)]
    gate = RoleProcess(config, tmp_path / "gate.log", "gate")
    procs = [single, *hosts, gate]
    try:
        for proc in procs:
            proc.start()
        gate.wait_ready()
        spread = wait_for_spread(gate, set(hosts))
        payer = _Payer(gate)
        payer.pay_round("before")
        epochs, moves = _epochs(mysql_url), [_moves(host) for host in hosts]

        etcd.stop()
        for host in hosts:
            wait_until(lambda host=host: log_events(host, "etcd unreachable: keeping the shards held, moving none"),
                       timeout_s=30, what="the host notices etcd is gone", detail=host.log_tail)
        # Down for longer than a lease: every lease would have lapsed, and still nothing moves.
        down_since, rounds = time.monotonic(), 0
        while time.monotonic() - down_since < LEASE_S + 1 and rounds < 50:
            payer.pay_round(f"down-{rounds}")
            rounds += 1
        assert gate.cluster_map() is None  # the gate has no map to show, and says so
        assert "etcd unreachable: no shard moves until it is back" in \
            requests.get(gate.ops_url + "/readyz", timeout=5).json()["warnings"]
        page = console_health(gate)
        assert 'class="alert warning">etcd unreachable: no shard moves until it is back.' in page
        assert console_cluster(page)[0] == {} and len(console_cluster(page)[1]) == 4 + 3  # the fences still tell

        etcd.start()  # same data directory: the leases are restored with a fresh time to live
        for host in hosts:
            wait_until(lambda host=host: len(log_events(host, "etcd reachable: membership registered")) >= 2,
                       timeout_s=30, what="the host back in etcd", detail=host.log_tail)
        assert wait_for_spread(gate, set(hosts)) == spread
        payer.pay_round("after")
        assert _epochs(mysql_url) == epochs
        assert [_moves(host) for host in hosts] == moves
        payer.assert_exact(config)
        for proc in (gate, *hosts, single):
            assert proc.terminate() == 0, proc.log_tail()
    finally:
        for proc in procs:
            proc.ensure_stopped()
        etcd.stop()
