"""A bank for withdrawal tests: the whole service (actors + HTTP front + admin API) on MariaDB and Redis,
watching and signing on a real anvil node, with the test token; staff of every role; users funded by real
deposits; the hot wallet funded on chain.

The chain, the scan and the signer are driven by hand (ScanNow, RunSigner asks; timers far away), so a test
never waits on a timer and every step is an explicit, checkable event.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from core import messages as m
from devnet.anvil import DEV_ADDRESSES, DEV_KEYS, Anvil, eth_balance, send_eth, token_balance, token_mint
from storage import admins, walletkeys
from storage.models import Withdrawal
from tests.chain.deposits_support import N, TOKEN, Wallet, deploy_test_token, start_wallet
from tests.helpers import FakeClock
from tests.web.conftest import PAY_PASSWORD, User

ETH = 10**18
NO_TIMER_MS = 3_600_000
RECIPIENT = "0x000000000000000000000000000000000000dEaD"


@dataclasses.dataclass
class Bank:
    node: Anvil
    wallet: Wallet
    staff: dict[str, str]  # name -> admin API token
    hot: str
    _keys: int = 0

    @property
    def api(self):
        return self.wallet.api

    @property
    def router(self):
        return self.wallet.system.router

    # -- people and money -------------------------------------------------------------------------------------
    def funded_user(self, name: str, eth: int = 0, tokens: int = 0) -> User:
        """A user whose balance arrived as real deposits, credited after N confirmations."""
        user, address = self.wallet.user(name)
        if eth:
            send_eth(self.node.url, DEV_KEYS[0], address, eth)
        if tokens:
            token_mint(self.node.url, self.wallet.token, DEV_KEYS[0], address, tokens)
        self.node.mine(N)
        self.wallet.scan_clean()
        return user

    def fund_hot_wallet(self, eth: int = 0, tokens: int = 0) -> None:
        if eth:
            send_eth(self.node.url, DEV_KEYS[0], self.hot, eth)
        if tokens:
            token_mint(self.node.url, self.wallet.token, DEV_KEYS[0], self.hot, tokens)

    def balance(self, user: User, asset: str = "ETH") -> tuple[int, int]:
        return self.router.balances(user.account_id)[asset]

    def chain_balance(self, address: str, asset: str = "ETH") -> int:
        if asset == "ETH":
            return eth_balance(self.node.url, address)
        return token_balance(self.node.url, self.wallet.token, address)

    # -- the user API -----------------------------------------------------------------------------------------
    def new_key(self) -> str:
        self._keys += 1
        return f"wd-{self._keys}"

    def request(self, user: User, amount: int, asset: str = "ETH", to: str = RECIPIENT, speed: str = "standard",
                key: str | None = None, pay_password: str = PAY_PASSWORD, **extra: Any):
        body = {"asset": asset, "to_address": to, "amount": str(amount), "pay_password": pay_password,
                "speed": speed, **extra}
        return self.api.client.post("/api/v1/withdrawals", json=body,
                                    headers={**user.auth, "Idempotency-Key": key or self.new_key()})

    def requested(self, user: User, amount: int, **kwargs: Any) -> dict:
        response = self.request(user, amount, **kwargs)
        assert response.status_code == 202, response.json
        return response.json

    def detail(self, user: User, withdrawal_id: str) -> dict:
        response = self.api.client.get(f"/api/v1/withdrawals/{withdrawal_id}", headers=user.auth)
        assert response.status_code == 200, response.json
        return response.json

    # -- the admin API ----------------------------------------------------------------------------------------
    def admin(self, method: str, path: str, as_: str = "rita", **kwargs: Any):
        headers = {"Authorization": f"Bearer {self.staff[as_]}", **kwargs.pop("headers", {})}
        return self.api.client.open(f"/admin/api/v1{path}", method=method, headers=headers, **kwargs)

    def approve(self, withdrawal_id: str, as_: str = "rita"):
        return self.admin("POST", f"/withdrawals/{withdrawal_id}/approve", as_=as_)

    # -- the chain and the actors -----------------------------------------------------------------------------
    def sign(self) -> m.SignerStats:
        return self.router.ask_actor("signer", m.RunSigner(), timeout=60)

    def settle(self, blocks: int = 0) -> None:
        if blocks:
            self.node.mine(blocks)
        self.wallet.scan_clean()

    def status(self, withdrawal_id: str | int) -> str:
        return Withdrawal.get_by_id(int(withdrawal_id)).status

    def stop(self) -> None:
        self.wallet.stop()


STAFF = (("rita", "reviewer"), ("rob", "reviewer"), ("otto", "operator"), ("aude", "auditor"))


def open_bank(node: Anvil, db_url: str, redis_prefix: str | None, node_urls: list[str] | None = None,
              clock: FakeClock | None = None, pool: int = 30, **overrides: Any) -> Bank:
    token = deploy_test_token(node.url)
    values = dict(signer_tick_ms=NO_TIMER_MS, withdraw_token_fees=((TOKEN, 2_000),))
    values.update(overrides)
    wallet = start_wallet(db_url, redis_prefix, node_urls or [node.url], token, pool=pool,
                          system_options={"signer_clock_ms": clock} if clock else None, **values)
    staff = {name: admins.create_admin(name, role).token for name, role in STAFF}
    return Bank(node, wallet, staff, walletkeys.wallet_address("hot"))


__all__ = ["Bank", "DEV_ADDRESSES", "DEV_KEYS", "ETH", "N", "RECIPIENT", "TOKEN", "open_bank"]
