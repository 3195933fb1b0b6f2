"""The console on the embedded shape (SQLite, no Redis, no chain node): login works, every page renders (the
review queue and a withdrawal's page too), and a credit retry without BlockWatch says so and changes nothing. Flask's test client, no browser."""

from __future__ import annotations

import pykka
import pyotp

from core.keys import KeyRing
from devnet.waiting import FakeClock
from storage import admins
from storage.models import Deposit, now_ms
from tests.conftest import MASTER_KEY, make_config
from tests.console.support import STAFF_PASSWORD, csrf_of
from core import messages as m
from tests.helpers import fund, register, start_system
from web import create_app
from web.security import hash_secret


def test_the_console_on_sqlite_without_a_chain(tmp_path):
    system = start_system(make_config(f"sqlite:///{tmp_path / 'wallet.sqlite3'}"), pool=5)
    try:
        app = create_app(system)
        clock = FakeClock(now_ms())
        app.extensions["console"].clock = clock
        created = admins.create_admin("olga", "operator", hash_secret(STAFF_PASSWORD), KeyRing.single(MASTER_KEY))
        client = app.test_client()
        token = csrf_of(client.get("/admin/login").get_data(as_text=True))
        answer = client.post("/admin/login", data={"csrf_token": token, "name": "olga", "password": STAFF_PASSWORD,
                                                   "code": pyotp.TOTP(created.totp_secret).at(clock() // 1000)})
        assert answer.status_code == 302
        pages = {path: client.get(path) for path in ("/admin/health", "/admin/deposits", "/admin/holds",
                                                      "/admin/accounts", "/admin/staff-log", "/admin/withdrawals",
                                                      "/admin/treasury")}
        assert all(page.status_code == 200 for page in pages.values()), {p: r.status_code for p, r in pages.items()}
        assert "No chain node configured" in pages["/admin/health"].get_data(as_text=True)
        assert 'id="cluster-single"' in pages["/admin/health"].get_data(as_text=True)  # role all: no cluster map
        assert "The signer is not running" in pages["/admin/treasury"].get_data(as_text=True)
        assert "No withdrawals match" in pages["/admin/withdrawals"].get_data(as_text=True)

        user = register(system, "wendy")
        fund(system, user.account_id, 10**18)
        withdrawal = system.router.command(m.RequestWithdrawal(
            op_id="w-embedded", account_id=user.account_id, asset="ETH",
            to_address="0x000000000000000000000000000000000000dEaD", amount=10**17, fee=10**15, speed="standard"))
        queue = client.get("/admin/withdrawals").get_data(as_text=True)
        assert f'id="withdrawal-{withdrawal.ref}"' in queue and "0.1 ETH" in queue
        detail = client.get(f"/admin/withdrawals/{withdrawal.ref}")
        assert detail.status_code == 200 and "reviewing" in detail.get_data(as_text=True)

        deposit_id = Deposit.insert(chain_id=1, tx_hash="0x" + "ab" * 32, log_index=-1, account_id=1,
                                    address="0x" + "00" * 20, asset="ETH", amount=5, block_number=1,
                                    block_hash="0x" + "11" * 32, status="credit_failed").execute()
        token = csrf_of(pages["/admin/deposits"].get_data(as_text=True))
        client.post(f"/admin/deposits/{deposit_id}/retry-credit", data={"csrf_token": token, "reason": "r"})
        assert "BlockWatch is not running" in client.get("/admin/deposits").get_data(as_text=True)
        assert Deposit.get_by_id(deposit_id).status == "credit_failed"
    finally:
        system.stop()
    assert not pykka.ActorRegistry.get_all()
