"""Fixtures for the HTTP front: a real actor system (MariaDB + Redis by default, SQLite without Redis
where a test asks for it) and a Flask test client over `create_app`.

Users are registered through the allocator with password hashes computed once per process (argon2 is
deliberately slow); logins and pay passwords still go through the real argon2 verify over HTTP.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flask
import flask.testing
import pytest

from core import messages as m
from storage.models import Operation, Posting
from tests.conftest import make_config
from tests.helpers import fund, start_system, wait_until
from web import create_app, create_ops_app
from web.security import hash_secret
from app.system import ActorSystem

PASSWORD = "correct horse battery"
PAY_PASSWORD = "pay-123456"


@functools.cache
def password_hashes() -> tuple[str, str]:
    return hash_secret(PASSWORD), hash_secret(PAY_PASSWORD)


@dataclasses.dataclass
class User:
    account_id: int
    username: str
    shard: int
    token: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    """A test client that knows the service's conventions (bearer tokens, idempotency keys)."""

    def __init__(self, system: ActorSystem, app: flask.Flask) -> None:
        self.system = system
        self.app = app
        self.client: flask.testing.FlaskClient = app.test_client()
        # The operations listener's app (/healthz, /readyz, /metrics: WALLET_OPS_HTTP), over the same front.
        self.ops: flask.testing.FlaskClient = create_ops_app(app).test_client()
        self._keys = 0

    @property
    def front(self):
        return self.app.extensions["wallet"]

    def user(self, username: str, funds: int = 0, login: bool = True) -> User:
        password_hash, pay_hash = password_hashes()
        reg = self.system.router.ask_actor("allocator", m.Register(username, password_hash, pay_hash))
        user = User(reg.account_id, reg.username, reg.shard)
        if funds:
            fund(self.system, user.account_id, funds)
        if login:
            user.token = self.login(username)
        return user

    def login(self, username: str, password: str = PASSWORD) -> str:
        response = self.client.post("/api/v1/sessions", json={"username": username, "password": password})
        assert response.status_code == 200, response.json
        return response.json["token"]

    def new_key(self) -> str:
        self._keys += 1
        return f"key-{self._keys}"

    def transfer(self, user: User, to: str, amount: str = "10", asset: str = "ETH", key: str | None = None,
                 pay_password: str = PAY_PASSWORD, headers: dict[str, str] | None = None, **kwargs: Any):
        headers = {**user.auth, "Idempotency-Key": key or self.new_key(), **(headers or {})}
        body = {"to_username": to, "asset": asset, "amount": amount, "pay_password": pay_password}
        return self.client.post("/api/v1/transfers", json=body, headers=headers, **kwargs)

    def balance(self, user: User, asset: str = "ETH") -> tuple[int, int]:
        return self.system.router.balances(user.account_id)[asset]

    def wait_balance(self, user: User, expected: tuple[int, int], asset: str = "ETH") -> None:
        wait_until(lambda: self.balance(user, asset) == expected, what=f"{user.username} balance {expected}")


def ledger_snapshot() -> tuple[int, int]:
    """(operations, postings) rows: a failed request must leave both unchanged."""
    return Operation.select().count(), Posting.select().count()


def start_api(config) -> tuple[ActorSystem, Api]:
    system = start_system(config, pool=30)
    return system, Api(system, create_app(system))


@pytest.fixture
def api(mysql_url, redis_prefix):
    """The production shape: MariaDB and Redis."""
    system, client = start_api(make_config(mysql_url, redis_prefix))
    yield client
    system.stop()


@pytest.fixture(params=["mysql+redis", "sqlite"])
def any_api(request, tmp_path, redis_prefix):
    """Both shapes: production (MariaDB + Redis) and embedded (SQLite, in-process limits and locks)."""
    if request.param == "sqlite":
        system, client = start_api(make_config(f"sqlite:///{tmp_path / 'wallet.sqlite3'}"))
        yield client
        system.stop()
        return
    mysql_url = request.getfixturevalue("mysql_url")
    system, client = start_api(make_config(mysql_url, redis_prefix))
    yield client
    system.stop()
