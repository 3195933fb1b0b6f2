"""Red-packet expiry across SIGKILL: `wallet serve` is killed around the expiries of several packets and
restarted; each packet's rest goes back to its sender exactly once, and `wallet audit` passes."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from core.ports import free_port
from storage.db import connect_database
from storage.models import Operation, RedPacket
from tests.conftest import make_config
from tests.helpers import wait_until
from tests.process.support import PAY_PASSWORD, WALLET, ServeProcess, eth_balance, login, prepare, wallet_env

FUNDS = 1_000


@pytest.mark.slow
def test_expiry_refunds_once_across_sigkills(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    prepare(config, {"sender": FUNDS, "claimer": 0})
    server = ServeProcess(wallet_env(config, free_port()), tmp_path / "serve.log")
    http = requests.Session()
    try:
        server.start()
        sender, claimer = login(http, server.url, "sender"), login(http, server.url, "claimer")
        started = time.monotonic()
        packets = []
        for n, expires_in_s in enumerate((2, 3, 4, 5)):  # 100 each, 4 equal shares: 25 claimed, 75 refunded
            sent = http.post(server.url + "/api/v1/red-packets", timeout=10, json={
                "asset": "ETH", "total": "100", "shares": 4, "mode": "equal", "expires_in_s": expires_in_s,
                "pay_password": PAY_PASSWORD}, headers={"Authorization": f"Bearer {sender}", "Idempotency-Key": f"p{n}"})
            assert sent.status_code == 201, sent.text
            packets.append(sent.json()["id"])
            claimed = http.post(server.url + f"/api/v1/red-packets/{sent.json()['code']}/claim", timeout=10,
                                headers={"Authorization": f"Bearer {claimer}"})
            assert claimed.json()["amount"] == "25", claimed.text
        for kill_at_s in (2.4, 3.6):  # between expiries: some refunded, some due, some not yet
            time.sleep(max(0.0, kill_at_s - (time.monotonic() - started)))
            server.kill()
            server.start()
        sender = login(http, server.url, "sender")
        wait_until(lambda: eth_balance(http, server.url, sender) == (FUNDS - 400 + 4 * 75, 0), timeout_s=30,
                   what="every packet's rest refunded", detail=server.log_tail)
        server.kill()  # and once more after every refund: nothing is refunded twice on restart
        server.start()
        time.sleep(1.5)  # a tick or more of the restarted shards
        assert eth_balance(http, server.url, login(http, server.url, "sender")) == (FUNDS - 400 + 300, 0)
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.ensure_stopped()
    connect_database(mysql_url)
    refunds = [op for (op,) in Operation.select(Operation.op_id).where(Operation.kind == "red_packet_refund").tuples()]
    assert sorted(refunds) == sorted(f"e:{p}" for p in packets)
    assert [(r.status, r.refunded) for r in RedPacket.select()] == [("expired", 75)] * 4
    audit = subprocess.run([WALLET, "audit"], env=server.env, capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stdout + audit.stderr
