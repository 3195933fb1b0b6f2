"""The admin console served for real: an actor system on MariaDB + Redis watching a real anvil node, the Flask
app on a free loopback port in a thread of this process (so the test moves the console's clock: session
expiry and TOTP codes are the test's to control), staff created as `wallet admin create` does, and HTTP
helpers that log in the way a browser does (form + CSRF token + session cookie)."""

from __future__ import annotations

import dataclasses
import html
import re
import secrets
import threading
from pathlib import Path

import pyotp
from eth_utils import to_checksum_address
import requests
from werkzeug.serving import make_server

from app.system import ActorSystem
from core import messages as m
from core.keys import KeyRing
from devnet.anvil import DEV_KEYS, Anvil, send_eth
from devnet.waiting import FakeClock
from storage import admins, walletkeys
from storage.db import drop_mysql_database
from storage.models import Account, Deposit, now_ms
from tests.conftest import MASTER_KEY, REDIS_URL, create_migrated_mysql_database, make_config, new_mysql_url
from tests.helpers import fund, start_system
from web import create_app
from web.security import hash_secret

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHAIN_ID = 31337
CONFIRMATIONS = 3
STAFF_PASSWORD = "staff password 12345"
ETH = 10**18
FOUR_EYES_ABOVE = 5 * ETH  # a withdrawal above this needs two reviewers
WITHDRAWAL_FEE = 10**15
RECIPIENT = "0x000000000000000000000000000000000000dEaD"
_CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"')


@dataclasses.dataclass
class Staff:
    id: int
    name: str
    role: str
    totp_secret: str
    password: str = STAFF_PASSWORD

    def code(self, clock: FakeClock, steps_ahead: int = 0) -> str:
        return pyotp.TOTP(self.totp_secret).at(clock.now_ms // 1000 + 30 * steps_ahead)


@dataclasses.dataclass
class Console:
    """The running service and what a test needs to drive it."""

    system: ActorSystem
    node: Anvil
    url: str
    clock: FakeClock
    config: object
    _server: object = None
    _thread: threading.Thread | None = None

    @property
    def admin_url(self) -> str:
        return self.url + "/admin"

    def staff(self, role: str, name: str | None = None) -> Staff:
        name = name or f"{role}-{secrets.token_hex(3)}"
        created = admins.create_admin(name, role, hash_secret(STAFF_PASSWORD), KeyRing.single(MASTER_KEY))
        return Staff(created.id, name, role, created.totp_secret)

    def staff_token(self, role: str) -> str:
        """The admin API token of a new staff member of this role."""
        return admins.create_admin(f"{role}-api-{secrets.token_hex(3)}", role).token

    def user(self, username: str | None = None, funds: int = 0) -> m.Registered:
        registered = self.system.router.ask_actor("allocator", m.Register(
            username or f"user-{secrets.token_hex(3)}", hash_secret("user password"), hash_secret("pay-123456")))
        if funds:
            fund(self.system, registered.account_id, funds)
        return registered

    def hold(self, account_id: int, reason: str) -> None:
        """What BlockWatch does after a reorg removes a credited deposit."""
        self.system.router.ask_actor("allocator", m.SetAccountHold(account_id, True, reason))

    def failed_credit(self, account: m.Registered, amount: int) -> int:
        """A deposit whose credit a shard refused for good (as when its asset was unconfigured at the time),
        deep enough to be due at once when set back to pending."""
        now = now_ms()
        return Deposit.insert(chain_id=CHAIN_ID, tx_hash="0x" + secrets.token_hex(32), log_index=-1,
                              account_id=account.account_id, address=account.deposit_address, asset="ETH",
                              amount=amount, block_number=1, block_hash="0x" + "11" * 32, status="credit_failed",
                              created_at=now, updated_at=now).execute()

    def withdrawal(self, account: m.Registered, amount: int, to: str = RECIPIENT, asset: str = "ETH") -> int:
        """A withdrawal request as the user API makes it (checksummed, then the shard checks and freezes amount +
        fee): its id."""
        result = self.system.router.command(m.RequestWithdrawal(
            op_id=f"w:{account.account_id}:{secrets.token_hex(6)}", account_id=account.account_id, asset=asset,
            to_address=to_checksum_address(to), amount=amount, fee=WITHDRAWAL_FEE, speed="standard"))
        return result.ref

    def fund_hot_wallet(self, wei: int) -> None:
        send_eth(self.node.url, DEV_KEYS[0], walletkeys.wallet_address("hot"), wei)

    def balance(self, account_id: int) -> tuple[int, int]:
        return self.system.router.balances(account_id)["ETH"]

    def on_hold(self, account_id: int) -> bool:
        return bool(Account.get_by_id(account_id).on_hold)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
        self.system.stop()


def start_console(db_url: str, redis_prefix: str, node: Anvil, **overrides) -> Console:
    values = dict(rpc_urls=(node.url,), confirmations=CONFIRMATIONS,
                  withdraw_four_eyes_above=(("ETH", FOUR_EYES_ABOVE),))
    values.update(overrides)
    config = make_config(db_url, redis_prefix, **values)
    system = start_system(config, pool=40)
    try:
        app = create_app(system)
        clock = FakeClock(now_ms())
        app.extensions["console"].clock = clock
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="console-http", daemon=True)
        thread.start()
    except BaseException:
        system.stop()
        raise
    return Console(system, node, f"http://127.0.0.1:{server.server_port}", clock, config, server, thread)


class ModuleServices:
    """A database, a Redis prefix and an anvil node for one test module (the fixtures of tests/conftest.py are
    per test; a console module shares one service across its tests to stay fast)."""

    def __init__(self) -> None:
        self.db_url = new_mysql_url()
        self.redis_prefix = f"wallet-test-{secrets.token_hex(6)}"
        self.node: Anvil | None = None

    def __enter__(self) -> ModuleServices:
        create_migrated_mysql_database(self.db_url)
        self.node = Anvil().start()
        self.node.mine(CONFIRMATIONS + 2)  # a tip deep enough that a deposit in block 1 is due
        return self

    def __exit__(self, *exc: object) -> None:
        if self.node is not None:
            self.node.stop()
        drop_mysql_database(self.db_url)
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{self.redis_prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


# -- HTTP without a browser -------------------------------------------------------------------------------


def csrf_of(page_html: str) -> str:
    match = _CSRF_RE.search(page_html)
    assert match, "no CSRF token on the page"
    return html.unescape(match.group(1) or match.group(2))


class StaffClient:
    """A requests session that behaves like a browser on the console (cookies, form posts, CSRF token)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.http = requests.Session()

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.http.get(self.console.admin_url + path, timeout=30, allow_redirects=False, **kwargs)

    def post(self, path: str, data: dict, csrf: str | None = "from-page", page: str | None = None,
             **kwargs) -> requests.Response:
        if csrf == "from-page":
            csrf = csrf_of(self.get(page or "/health").text)
        body = dict(data)
        if csrf is not None:
            body["csrf_token"] = csrf
        return self.http.post(self.console.admin_url + path, data=body, timeout=30, allow_redirects=False, **kwargs)

    def login(self, staff: Staff, code: str | None = None, password: str | None = None) -> requests.Response:
        token = csrf_of(self.get("/login").text)
        return self.http.post(self.console.admin_url + "/login", timeout=30, allow_redirects=False, data={
            "csrf_token": token, "name": staff.name, "password": password or staff.password,
            "code": code or staff.code(self.console.clock)})

    def logged_in(self, staff: Staff, steps_ahead: int = 0) -> StaffClient:
        """Logged in with a code of a step no login has used yet (each test takes a step of its own)."""
        answer = self.login(staff, staff.code(self.console.clock, steps_ahead))
        assert answer.status_code == 302, answer.text
        return self
