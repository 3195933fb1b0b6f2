"""Shared by the BlockWatch tests: a wallet (actor system + HTTP front) watching a real anvil node, with the
test token configured, and ways to drive and observe the scan.

Scans are driven synchronously (ScanNow asks) with the poll timer set far away, so tests never wait on
timers; a test that wants the timer sets `chain_poll_s` itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from core import messages as m
from storage.models import Account, Deposit
from devnet.anvil import DEV_ADDRESSES, DEV_KEYS, Anvil, deploy_token, token_mint
from tests.conftest import make_config
from tests.helpers import start_system
from tests.web.conftest import Api, User, password_hashes
from core.config import TokenConfig
from app.system import ActorSystem
from web import create_app

N = 3  # confirmations in these tests
TOKEN = "TKN"
TOKEN_SUPPLY = 10**30
NO_TIMER_S = 3600.0


def deploy_test_token(node_url: str) -> str:
    """The configured token, with supply minted to dev accounts 1..3 (account 0 sends ETH)."""
    token = deploy_token(node_url, DEV_KEYS[0], symbol=TOKEN, decimals=6)
    for holder in DEV_ADDRESSES[1:4]:
        token_mint(node_url, token, DEV_KEYS[0], holder, TOKEN_SUPPLY)
    return token


@dataclasses.dataclass
class Wallet:
    system: ActorSystem
    api: Api
    token: str

    def scan(self, max_steps: int = 1000) -> m.ScanReport:
        report = self.system.router.ask_actor("blockwatch", m.ScanNow(max_steps), timeout=60)
        return report

    def scan_clean(self, max_steps: int = 1000) -> m.ScanReport:
        report = self.scan(max_steps)
        assert not report.errors, report.errors
        return report

    def stats(self) -> dict:
        return self.system.router.ask_actor("blockwatch", m.GetStats(), timeout=10)

    def user(self, username: str) -> tuple[User, str]:
        """A registered, logged-in user and their deposit address."""
        password_hash, pay_hash = password_hashes()
        reg = self.system.router.ask_actor("allocator", m.Register(username, password_hash, pay_hash))
        user = User(reg.account_id, reg.username, reg.shard)
        user.token = self.api.login(username)
        return user, reg.deposit_address

    def balance(self, account_id: int, asset: str = "ETH") -> int:
        available, frozen = self.system.router.balances(account_id)[asset]
        assert frozen == 0
        return available

    def api_deposits(self, user: User) -> list[dict]:
        response = self.api.client.get("/api/v1/deposits?limit=200", headers=user.auth)
        assert response.status_code == 200, response.json
        return response.json["deposits"]

    def api_balance(self, user: User, asset: str = "ETH") -> int:
        response = self.api.client.get("/api/v1/balances", headers=user.auth)
        assert response.status_code == 200, response.json
        return int(next(b["available"] for b in response.json["balances"] if b["asset"] == asset))

    def stop(self) -> None:
        self.system.stop()


def deposit_rows(**where: Any) -> list[Deposit]:
    query = Deposit.select().order_by(Deposit.id)
    for name, value in where.items():
        query = query.where(getattr(Deposit, name) == value)
    return list(query)


def start_wallet(db_url: str, redis_prefix: str | None, node_urls: list[str], token: str, pool: int = 30,
                 system_options: dict | None = None, **overrides: Any) -> Wallet:
    values = dict(rpc_urls=tuple(node_urls), confirmations=N, tokens=(TokenConfig(TOKEN, token, 6),),
                  chain_poll_s=NO_TIMER_S, min_deposits=(("ETH", 1000), (TOKEN, 1)))
    values.update(overrides)
    system = start_system(make_config(db_url, redis_prefix, **values), pool=pool, **(system_options or {}))
    return Wallet(system, Api(system, create_app(system)), token)


def on_hold(account_id: int) -> bool:
    return bool(Account.get_by_id(account_id).on_hold)


__all__ = ["Anvil", "DEV_ADDRESSES", "DEV_KEYS", "N", "TOKEN", "Wallet", "deploy_test_token", "deposit_rows",
           "on_hold", "start_wallet"]
