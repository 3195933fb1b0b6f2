"""Crash through HTTP: clients send transfers with Idempotency-Keys to `wallet serve`; the process is killed
with SIGKILL several times and restarted; clients retry every unanswered request with the same key. Every
transfer is applied exactly once, balances are exact, and `wallet audit` passes."""

from __future__ import annotations

import random
import subprocess
import threading

import pytest
import requests

from storage.models import Operation
from tests.conftest import make_config
from tests.helpers import wait_until
from core.ports import free_port
from tests.process.support import (PAY_PASSWORD, WALLET, ServeProcess, eth_balance, login,
                                   password_of, prepare, wallet_env)
from web.idempotency import op_id
from web.transfers import OP_PREFIX

USERS = [f"user{i}" for i in range(8)]  # two per shard: same-shard and cross-shard transfers both happen
FUNDS = 10**12
TRANSFERS_PER_CLIENT = 60
KILLS = 3
# A request cut off by a kill leaves its in-flight mark in Redis until it expires (2 x ask timeout + 10 s);
# retries see 409 until then, so clients keep trying well past that.
CLIENT_DEADLINE_S = 90.0


class Client(threading.Thread):
    """Sends its planned transfers in order; an unanswered one is retried with the same key until answered."""

    def __init__(self, base_url: str, name: str, plan: list[tuple[str, str, int]]) -> None:
        super().__init__(name=f"client-{name}", daemon=True)
        self.base_url, self.user, self.plan = base_url, name, plan
        self.answered: dict[str, str] = {}  # key -> transfer id
        self.retries = 0
        self.error: str | None = None
        self.http = requests.Session()
        self.token: str | None = None

    def run(self) -> None:
        try:
            self._send_all()
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            self.error = repr(exc)

    def _send_all(self) -> None:
        wait_until(self._send_unanswered, timeout_s=CLIENT_DEADLINE_S, interval_s=0.05,
                   what=f"{self.user}'s {len(self.plan)} transfers answered",
                   detail=lambda: f"{len(self.answered)} answered")

    def _send_unanswered(self) -> bool:
        """Sends the planned transfers not yet answered, in order, up to the first left unanswered."""
        return all(key in self.answered or self._send(key, to, amount) for key, to, amount in self.plan)

    def _send(self, key: str, to: str, amount: int) -> bool:
        """True if answered; False if the server did not answer it this time (it is then retried)."""
        try:
            self.token = self.token or self._login()
            answer = self.http.post(self.base_url + "/api/v1/transfers", timeout=15, json={
                "to_username": to, "asset": "ETH", "amount": str(amount), "pay_password": PAY_PASSWORD},
                headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": key})
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                ServerRestarting):  # cut off by the kill: unanswered, so retried
            self.retries += 1
            self.http = requests.Session()
            return False
        if answer.status_code in (401, 409, 503):  # session lost, in flight, or restarting
            self.token = None if answer.status_code == 401 else self.token
            self.retries += 1
            return False
        assert answer.status_code == 201, f"{key}: unexpected {answer.status_code} {answer.text[:200]}"
        self.answered[key] = answer.json()["id"]
        return True

    def _login(self) -> str:
        answer = self.http.post(self.base_url + "/api/v1/sessions", timeout=15,
                                json={"username": self.user, "password": password_of(self.user)})
        if answer.status_code == 503:
            raise ServerRestarting(answer.text)
        assert answer.status_code == 200, answer.text
        return answer.json()["token"]


class ServerRestarting(Exception):
    pass


@pytest.mark.slow
def test_sigkill_restart_and_retry_apply_each_transfer_once(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    accounts = prepare(config, {name: FUNDS for name in USERS})
    rng = random.Random(7)
    plans = {name: [(f"{name}-{n}", rng.choice([u for u in USERS if u != name]), rng.randrange(1, 10**6))
                    for n in range(TRANSFERS_PER_CLIENT)] for name in USERS}
    server = ServeProcess(wallet_env(config, free_port()), tmp_path / "serve.log")
    try:
        server.start()
        clients = [Client(server.url, name, plans[name]) for name in USERS]
        for client in clients:
            client.start()
        for _ in range(KILLS):
            _wait_for_progress(clients, server, more=40)
            server.kill()
            server.start()
        for client in clients:
            client.join(timeout=CLIENT_DEADLINE_S + 30)
        assert [c.error for c in clients if c.error] == []
        assert sum(c.retries for c in clients) >= KILLS  # the kills did cut requests off

        expected = _expected_balances(plans)
        http = requests.Session()
        tokens = {name: login(http, server.url, name) for name in USERS}

        def balances() -> dict[str, int]:
            return {name: eth_balance(http, server.url, tokens[name])[0] for name in USERS}

        wait_until(lambda: balances() == expected, timeout_s=30, interval_s=0.1,
                   what="the balances planned (outbox not delivered?)", detail=lambda: f"balances: {balances()}")
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.ensure_stopped()

    # Exactly once: one operation row per planned transfer, each under the op id its key maps to.
    want = {op_id(OP_PREFIX, accounts[name][0], key) for name in USERS for key, _, _ in plans[name]}
    got = {row.op_id for row in Operation.select(Operation.op_id).where(Operation.kind == "transfer")}
    assert got == want
    for client in clients:  # every answer named the op its key maps to
        assert all(tid == op_id(OP_PREFIX, accounts[client.user][0], key) for key, tid in client.answered.items())
    audit = subprocess.run([WALLET, "audit"], env=server.env, capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def _wait_for_progress(clients: list[Client], server: ServeProcess, more: int) -> None:
    start = sum(len(c.answered) for c in clients)

    def progressed() -> bool:
        assert any(c.is_alive() for c in clients), [c.error for c in clients]
        return sum(len(c.answered) for c in clients) >= start + more

    wait_until(progressed, timeout_s=60, interval_s=0.01, what=f"{more} more transfers answered after {start}",
               detail=server.log_tail)


def _expected_balances(plans: dict[str, list[tuple[str, str, int]]]) -> dict[str, int]:
    balance = {name: FUNDS for name in plans}
    for sender, plan in plans.items():
        for _, to, amount in plan:
            balance[sender] -= amount
            balance[to] += amount
    return balance
