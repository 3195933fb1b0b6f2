"""The fence across processes: host A owns every shard; host B waits for them. A is SIGSTOPped and its
lock connections are killed from SQL; B takes over (next epoch) and serves transfers. A is SIGCONTed: it
commits nothing more, lets go of its shards, and the balances are exact."""

from __future__ import annotations

import signal
import subprocess

import pymysql
import pytest
import requests

from storage.db import mysql_params
from tests.cluster.support import SINGLETONS, RoleProcess, log_events
from tests.conftest import make_config
from tests.helpers import wait_until
from tests.process.support import PAY_PASSWORD, WALLET, eth_balance, login, prepare

FUNDS = 10**15


def _transfer(http, gate, token, to, key, amount=1000) -> requests.Response:
    return http.post(gate.url + "/api/v1/transfers", timeout=15, json={
        "to_username": to, "asset": "ETH", "amount": str(amount), "pay_password": PAY_PASSWORD},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})


def _transfer_until_answered(http, gate, token, to, key) -> None:
    def answered():
        answer = _transfer(http, gate, token, to, key)
        assert answer.status_code in (201, 409, 503), answer.text
        return answer.status_code == 201
    wait_until(answered, timeout_s=30, interval_s=0.1, what=f"transfer {key} answered", detail=gate.log_tail)


@pytest.mark.slow
def test_paused_host_is_fenced_out_after_takeover(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    prepare(config, {"alice": FUNDS, "bob": 0, "carol": 0, "dave": 0})
    single = RoleProcess(config, tmp_path / "single.log", SINGLETONS)
    host_a = RoleProcess(config, tmp_path / "a.log", "transrv")
    host_b = RoleProcess(config, tmp_path / "b.log", "transrv")
    gate = RoleProcess(config, tmp_path / "gate.log", "gate")
    procs = [single, host_a, gate]
    sent = 0
    try:
        for proc in procs:
            proc.start()
        gate.wait_ready()
        http = requests.Session()
        token = login(http, gate.url, "alice")
        for to in ("bob", "carol", "dave"):
            _transfer_until_answered(http, gate, token, to, f"before-{to}")
            sent += 1
        owned_a = {e["owner_of"]: e["lock_connection"] for e in log_events(host_a, "owning")}
        assert set(owned_a) == {f"shard-{s}" for s in range(4)}

        procs.append(host_b.start_waiting())
        wait_until(lambda: log_events(host_b, "waiting for the owner of a shard to let go"), timeout_s=30,
                   what="host B waiting for the shards", detail=host_b.log_tail)
        host_a.proc.send_signal(signal.SIGSTOP)
        killer = pymysql.connect(**mysql_params(mysql_url), autocommit=True)
        with killer.cursor() as cursor:
            for connection_id in owned_a.values():
                cursor.execute(f"KILL {int(connection_id)}")
        killer.close()
        wait_until(lambda: len(log_events(host_b, "owning")) == 4, timeout_s=30, what="host B owns every shard",
                   detail=host_b.log_tail)
        for n, to in enumerate(("bob", "carol", "dave") * 2):
            _transfer_until_answered(http, gate, token, to, f"during-{n}")
            sent += 1

        host_a.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: len(log_events(host_a, "let go of a shard")) == 4, timeout_s=30,
                   what="host A lets go of every shard", detail=host_a.log_tail)
        # A fenced shard stopped itself for good: the supervisor must not restart it (that leaked an actor).
        assert not log_events(host_a, "actor died; restarting from the database"), host_a.log_tail()
        for n, to in enumerate(("bob", "carol", "dave") * 2):
            _transfer_until_answered(http, gate, token, to, f"after-{n}")
            sent += 1
        assert eth_balance(http, gate.url, token) == (FUNDS - 1000 * sent, 0)
        names = {"bob": 0, "carol": 0, "dave": 0}
        for name in names:
            names[name] = eth_balance(http, gate.url, login(http, gate.url, name))[0]
        assert sum(names.values()) == 1000 * sent
        db = pymysql.connect(**mysql_params(mysql_url))
        with db.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM operation WHERE kind = 'transfer'")
            assert cursor.fetchone()[0] == sent
            cursor.execute("SELECT MIN(epoch), MAX(epoch) FROM shard_owner WHERE name LIKE 'shard-%%'")
            assert cursor.fetchone() == (2, 2)
        db.close()
        for proc in (gate, host_b, host_a, single):
            assert proc.terminate() == 0, proc.log_tail()
        audit = subprocess.run([WALLET, "audit"], env=gate.env, capture_output=True, text=True, timeout=60)
        assert audit.returncode == 0, audit.stdout + audit.stderr
    finally:
        for proc in procs:
            proc.proc.send_signal(signal.SIGCONT) if proc.proc and proc.proc.poll() is None else None
            proc.ensure_stopped()


def test_sigterm_ends_a_wait_for_shards_another_host_holds(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    prepare(config, {"alice": 0})
    owner = RoleProcess(config, tmp_path / "owner.log", "transrv", "0")
    waiter = RoleProcess(config, tmp_path / "waiter.log", "transrv", "0")
    try:
        owner.start()
        waiter.start_waiting()
        wait_until(lambda: log_events(waiter, "waiting for the owner of a shard to let go"), timeout_s=30,
                   what="the second host waiting", detail=waiter.log_tail)
        waiter.proc.send_signal(signal.SIGTERM)
        assert waiter.proc.wait(timeout=30) == 1
        assert "stopped while waiting to own shard-0" in waiter.log_text()
        assert owner.terminate() == 0, owner.log_tail()
    finally:
        owner.ensure_stopped()
        waiter.ensure_stopped()


def test_a_singletons_process_that_loses_its_lock_exits_and_its_standby_takes_over(mysql_url, redis_prefix,
                                                                                    tmp_path):
    """The wiring of a singleton's fence (app/system.py): its lock connection killed from SQL, the process
    stops with exit code 1 (a singleton has no share to hand back) and the standby with the same roles takes
    every singleton at the next epoch; registration goes on through a gate."""
    config = make_config(mysql_url, redis_prefix)
    prepare(config, {"alice": 0})
    first = RoleProcess(config, tmp_path / "first.log", SINGLETONS)
    standby = RoleProcess(config, tmp_path / "standby.log", SINGLETONS)
    host = RoleProcess(config, tmp_path / "host.log", "transrv")
    gate = RoleProcess(config, tmp_path / "gate.log", "gate")
    procs = [first, host, gate]
    try:
        for proc in procs:
            proc.start()
        procs.append(standby.start_waiting())
        wait_until(lambda: log_events(standby, "waiting for the owner of a shard to let go"), timeout_s=30,
                   what="the standby waiting", detail=standby.log_tail)
        owned = {e["owner_of"]: (e["epoch"], e["lock_connection"]) for e in log_events(first, "owning")}
        assert set(owned) == {"allocator", "signer", "blockwatch"}
        killer = pymysql.connect(**mysql_params(mysql_url), autocommit=True)
        with killer.cursor() as cursor:
            cursor.execute(f"KILL {int(owned['signer'][1])}")
        killer.close()
        assert first.proc.wait(timeout=30) == 1, first.log_tail()
        assert "lost the database lock of signer" in first.log_text()
        wait_until(lambda: {e["owner_of"] for e in log_events(standby, "owning")} == set(owned), timeout_s=30,
                   what="the standby owning every singleton", detail=standby.log_tail)
        taken = {e["owner_of"]: e["epoch"] for e in log_events(standby, "owning")}
        assert taken == {name: epoch + 1 for name, (epoch, _) in owned.items()}
        gate.wait_ready()
        joined = requests.post(gate.url + "/api/v1/accounts", timeout=30, json={
            "username": "bea", "password": "bea-password-1", "pay_password": PAY_PASSWORD})
        assert joined.status_code == 201, joined.text  # through the standby's allocator
        for proc in (gate, host, standby):
            assert proc.terminate() == 0, proc.log_tail()
    finally:
        for proc in procs:
            proc.ensure_stopped()
