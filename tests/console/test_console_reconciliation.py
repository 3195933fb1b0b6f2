"""The console's health page shows the last reconciliation, and a drifting asset as a red (critical) line and
alert; a clean report raises no alert."""

from __future__ import annotations

import json

from storage.db import database_proxy
from storage.models import Reconciliation, now_ms
from tests.console.support import StaffClient
from treasury.reserves import Reserves


def store(drift_eth: int) -> None:
    lines = [{"asset": "ETH", "liabilities": "5", "fees": "0", "system": "0", "pending": "0", "in_flight": "0",
              "float": "0", "holdings": str(5 + drift_eth), "expected": "5", "drift": str(drift_eth)}]
    Reconciliation.create(block_number=42, block_hash="0x" + "ab" * 32, clean=drift_eth == 0, trigger="interval",
                          lines=json.dumps(lines), created_at=now_ms())


def test_a_drift_is_a_red_line_on_the_health_page(console):
    staff = console.staff("auditor")
    client = StaffClient(console)
    assert client.login(staff).status_code == 302
    store(-3)
    page = client.get("/health")
    assert page.status_code == 200
    assert "Reconciliation drift at block 42: ETH holdings 2 against 5 explained (-3 base units)." in page.text
    assert '<tr class="alert critical"><td>ETH</td>' in page.text and "Block 42, DRIFT" in page.text
    store(0)
    page = client.get("/health")
    assert "Reconciliation drift" not in page.text and "Block 42, clean" in page.text
    assert '<tr class="alert critical"><td>ETH</td>' not in page.text


def test_the_last_reserves_snapshot_is_on_the_health_page(console):
    console.user(funds=77)
    taken = Reserves(database_proxy.obj, console.config.key_ring()).snapshot("ETH")
    client = StaffClient(console)
    assert client.login(console.staff("auditor")).status_code == 302
    page = client.get("/health")
    assert page.status_code == 200 and f"<code>{taken.root}</code>" in page.text
    assert f'<td class="num">{taken.total}</td>' in page.text
