"""`wallet demo`: the whole service on one machine with nothing to install beyond the Python requirements.

A fresh SQLite file under var/demo/, in-process queues instead of Redis, an in-process EVM chain mining a
block every few seconds, three demo users with balances, the HTTP API, and the admin console with a demo
reviewer (name, password and TOTP secret printed: demo only) and one withdrawal waiting in its review queue.
It prints a walkthrough of curl commands; `--check` runs the very same steps over real HTTP and exits 0 only if each behaved.

Demo balances arrive the way real money does: the chain's pre-funded dev account sends ETH to each user's
deposit address and the block watcher credits it after the confirmations.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import requests

from chain.embedded import EmbeddedChain
from storage import admins, walletkeys
from core.config import Config
from app.logs import JsonFormatter
from app.serve import WalletServer, check_can_listen
from core.ports import free_port

log = logging.getLogger(__name__)

DEMO_ROOT = Path("var") / "demo"
DEMO_USERS = ("alice", "bob", "carol")
PAY_PASSWORD = "123456"
SEED_WEI = 5 * 10**18
ONE_ETH = 10**18
DEMO_CONFIRMATIONS = 3
POOL_SIZE = 50
HTTP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 60.0
STEP_WAIT_S = 15.0  # for steps that observe an eventually-consistent result (a cross-shard credit)
WITHDRAWAL_WAIT_S = 60.0  # signing, a block, then the confirmations at a block every few seconds
DEMO_AUTO_APPROVE_WEI = ONE_ETH  # demo withdrawals below this need no reviewer
HOT_WALLET_SEED_WEI = 100 * 10**18
DEMO_RECIPIENT = "0x000000000000000000000000000000000000dEaD"
DEMO_REVIEWER = "demo-reviewer"
DEMO_REVIEWER_PASSWORD = "demo-reviewer-password"  # demo only: printed on purpose
REVIEW_WITHDRAWAL_WEI = 3 * ONE_ETH // 2  # above the auto-approval: waits in the console's review queue
CSRF_RE = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
DEMO_STAFF = "demo-auditor"
DEMO_SWEEP_MIN_WEI = ONE_ETH // 100  # deposit addresses holding this much are swept into the hot wallet


def password_of(username: str) -> str:
    return f"{username}-password"


@dataclasses.dataclass
class Step:
    """One HTTP call of the walkthrough: printed as a curl command, executed by --check."""

    title: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    as_user: str | None = None  # sends $<USER>_TOKEN
    idempotency_key: str | None = None
    status: int = 200
    check: Callable[[Any, dict[str, Any]], str | None] | None = None  # -> complaint, or None if fine
    save_token_of: str | None = None  # a login: keep the token as $<USER>_TOKEN
    wait_s: float = 0.0  # retry until the check passes, up to this long
    save_fields: tuple[tuple[str, str], ...] = ()  # (shell variable, answer field): later paths use $VARIABLE
    as_staff: bool = False  # sends $ADMIN_TOKEN (the demo's read-only auditor) to the admin API

    def curl(self, base_url: str) -> str:
        parts = ["curl -s" if self.save_token_of else "curl -s -w '\\n'"]
        if self.method != "GET":
            parts.append(f"-X {self.method}")
        # $CODE and $PACKET_ID are shell variables in the printed walkthrough (set them from the answer above)
        parts.append('"' + base_url + self.path + '"' if "$" in self.path else shlex.quote(base_url + self.path))
        if self.as_user:
            parts.append(f'-H "Authorization: Bearer ${token_var(self.as_user)}"')
        if self.as_staff:
            parts.append('-H "Authorization: Bearer $ADMIN_TOKEN"')
        if self.idempotency_key:
            parts.append("-H " + shlex.quote(f"Idempotency-Key: {self.idempotency_key}"))
        if self.body is not None:
            parts.append("-H 'Content-Type: application/json' -d " + shlex.quote(json.dumps(self.body)))
        command = " ".join(parts)
        if self.save_fields:
            saves = "; ".join(f"{var}=$(printf %s \"$ANSWER\" | python3 -c 'import json,sys; "
                              f"print(json.load(sys.stdin)[\"{field}\"])')" for var, field in self.save_fields)
            return f'ANSWER=$({command}); echo "$ANSWER"; {saves}'
        if self.save_token_of:
            return (f"{token_var(self.save_token_of)}=$({command} | "
                    "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])')")
        return command


def token_var(username: str) -> str:
    return f"{username.upper()}_TOKEN"


def walkthrough() -> list[Step]:
    transfer = {"to_username": "bob", "asset": "ETH", "amount": str(ONE_ETH), "pay_password": PAY_PASSWORD}
    withdrawal = {"asset": "ETH", "to_address": DEMO_RECIPIENT, "amount": str(ONE_ETH // 2),
                  "pay_password": PAY_PASSWORD, "speed": "fast"}
    red_packet = {"asset": "ETH", "total": str(ONE_ETH), "shares": 3, "mode": "random", "expires_in_s": 3600,
                  "pay_password": PAY_PASSWORD}
    return [
        Step("Register a new account (409 if you run it twice)", "POST", "/api/v1/accounts",
             {"username": "dave", "password": password_of("dave"), "pay_password": "246810"}, status=201,
             check=lambda body, ctx: _expect(body.get("username") == "dave"
                                             and body.get("deposit_address", "").startswith("0x"), body)),
        Step("Log in as alice; the token goes into $ALICE_TOKEN", "POST", "/api/v1/sessions",
             {"username": "alice", "password": password_of("alice")}, save_token_of="alice",
             check=lambda body, ctx: _expect(bool(body.get("token")), body)),
        Step("Who am I", "GET", "/api/v1/me", as_user="alice",
             check=lambda body, ctx: _expect(body.get("username") == "alice", body)),
        Step("alice's balances (amounts are wei, as strings)", "GET", "/api/v1/balances", as_user="alice",
             check=lambda body, ctx: _expect_eth(body, SEED_WEI)),
        Step("Send 1 ETH to bob (another shard); the Idempotency-Key makes a retry safe", "POST",
             "/api/v1/transfers", transfer, as_user="alice", idempotency_key="demo-transfer-1", status=201,
             check=_remember_transfer),
        Step("Retry the same request: the first answer again, nothing moves twice", "POST", "/api/v1/transfers",
             transfer, as_user="alice", idempotency_key="demo-transfer-1", status=201,
             check=lambda body, ctx: _expect(body.get("id") == ctx.get("transfer_id"), body)),
        Step("Same key with another amount: refused (422)", "POST", "/api/v1/transfers",
             {**transfer, "amount": str(2 * ONE_ETH)}, as_user="alice", idempotency_key="demo-transfer-1",
             status=422, check=lambda body, ctx: _expect(body.get("code") == "idempotency_key_reused", body)),
        Step("alice now has 4 ETH", "GET", "/api/v1/balances", as_user="alice",
             check=lambda body, ctx: _expect_eth(body, SEED_WEI - ONE_ETH)),
        Step("alice's history, newest first", "GET", "/api/v1/history?limit=5", as_user="alice",
             check=_expect_transfer_in_history),
        Step("Log in as bob", "POST", "/api/v1/sessions", {"username": "bob", "password": password_of("bob")},
             save_token_of="bob", check=lambda body, ctx: _expect(bool(body.get("token")), body)),
        Step("bob has 6 ETH once the cross-shard credit lands (milliseconds)", "GET", "/api/v1/balances",
             as_user="bob", wait_s=STEP_WAIT_S, check=lambda body, ctx: _expect_eth(body, SEED_WEI + ONE_ETH)),
        Step("alice's on-chain deposits, with confirmations", "GET", "/api/v1/deposits", as_user="alice",
             check=_expect_seed_deposit),
        Step("What a withdrawal of ETH costs now, per speed (from the chain's fee history)", "GET",
             "/api/v1/withdrawals/fees?asset=ETH", as_user="alice", check=_expect_fee_quotes),
        Step(f"alice withdraws 0.5 ETH to an outside address (demo: approved automatically below "
             f"{DEMO_AUTO_APPROVE_WEI // ONE_ETH} ETH)", "POST", "/api/v1/withdrawals", withdrawal,
             as_user="alice", idempotency_key="demo-withdrawal-1", status=202, check=_remember_withdrawal),
        Step("The signer signs and broadcasts it; after the confirmations it is confirmed on the chain", "GET",
             "/api/v1/withdrawals?limit=1", as_user="alice", wait_s=WITHDRAWAL_WAIT_S, check=_expect_confirmed),
        Step("The signer swept the users' deposit addresses into the hot wallet (custody only: no balance "
             "changed; the gas burnt is booked to the fees account)", "GET", "/admin/api/v1/sweeps?kind=eth",
             as_staff=True, wait_s=WITHDRAWAL_WAIT_S, check=_expect_swept),
        Step("alice sends a red packet: 1 ETH in 3 random shares, for an hour; the code is what she shares",
             "POST", "/api/v1/red-packets", red_packet, as_user="alice", idempotency_key="demo-packet-1", status=201,
             check=_remember_packet, save_fields=(("CODE", "code"), ("PACKET_ID", "id"))),
        Step("bob claims a share (the amount is decided by alice's shard)", "POST",
             "/api/v1/red-packets/$CODE/claim", as_user="bob", check=_expect_claim),
        Step("bob claims again: one share per account (409)", "POST", "/api/v1/red-packets/$CODE/claim",
             as_user="bob", status=409, check=lambda body, ctx: _expect(body.get("code") == "already_claimed", body)),
        Step("alice sees who claimed what", "GET", "/api/v1/red-packets/$PACKET_ID", as_user="alice",
             check=_expect_packet_view),
    ]


def _expect(ok: bool, body: Any) -> str | None:
    return None if ok else f"unexpected answer {json.dumps(body)[:300]}"


def _eth(body: Any) -> tuple[int, int] | None:
    for row in body.get("balances", []) if isinstance(body, dict) else []:
        if row.get("asset") == "ETH":
            return int(row["available"]), int(row["frozen"])
    return None


def _expect_eth(body: Any, available: int) -> str | None:
    return _expect(_eth(body) == (available, 0), body)


def _remember_transfer(body: Any, ctx: dict[str, Any]) -> str | None:
    ctx["transfer_id"] = body.get("id")
    return _expect(bool(body.get("id")) and body.get("status") in ("completed", "in_transit"), body)


def _expect_transfer_in_history(body: Any, ctx: dict[str, Any]) -> str | None:
    entries = body.get("entries", []) if isinstance(body, dict) else []
    mine = [e for e in entries if e.get("op_id") == ctx.get("transfer_id")]
    return _expect(any(e.get("amount") == str(-ONE_ETH) for e in mine), body)


def _expect_fee_quotes(body: Any, ctx: dict[str, Any]) -> str | None:
    fees = body.get("fees", {}) if isinstance(body, dict) else {}
    return _expect(set(fees) == {"slow", "standard", "fast"} and all(int(v) > 0 for v in fees.values()), body)


def _remember_withdrawal(body: Any, ctx: dict[str, Any]) -> str | None:
    ctx["withdrawal_id"] = body.get("id")
    return _expect(body.get("status") == "approved" and int(body.get("fee", "0")) > 0, body)


def _expect_confirmed(body: Any, ctx: dict[str, Any]) -> str | None:
    rows = body.get("withdrawals", []) if isinstance(body, dict) else []
    mine = [w for w in rows if w.get("id") == ctx.get("withdrawal_id")]
    return _expect(bool(mine) and mine[0]["status"] == "confirmed" and mine[0]["tx_hash"], body)


def _expect_swept(body: Any, ctx: dict[str, Any]) -> str | None:
    rows = body.get("sweeps", []) if isinstance(body, dict) else []
    done = [r for r in rows if r.get("status") == "confirmed" and r.get("tx_hash") and int(r.get("gas_paid") or 0) > 0]
    return _expect(len(done) >= len(DEMO_USERS), body)


def _remember_packet(body: Any, ctx: dict[str, Any]) -> str | None:
    ctx["CODE"], ctx["PACKET_ID"] = body.get("code"), body.get("id")
    return _expect(bool(body.get("code")) and body.get("status") == "open", body)


def _expect_claim(body: Any, ctx: dict[str, Any]) -> str | None:
    ctx["claimed"] = body.get("amount")
    return _expect(body.get("red_packet_id") == ctx.get("PACKET_ID") and 1 <= int(body.get("amount", 0)) < ONE_ETH,
                   body)


def _expect_packet_view(body: Any, ctx: dict[str, Any]) -> str | None:
    claimed = body.get("claimed", []) if isinstance(body, dict) else []
    return _expect([(c.get("username"), c.get("amount")) for c in claimed] == [("bob", ctx.get("claimed"))]
                   and body.get("status") == "open", body)


def _expect_seed_deposit(body: Any, ctx: dict[str, Any]) -> str | None:
    deposits = body.get("deposits", []) if isinstance(body, dict) else []
    return _expect(any(d.get("amount") == str(SEED_WEI) and d.get("status") == "confirmed" for d in deposits), body)


class Demo:
    """Seeds the demo users through the running server, then prints or checks the walkthrough."""

    def __init__(self, chain: EmbeddedChain, check: bool, data_dir: Path) -> None:
        self.chain = chain
        self.check = check
        self.data_dir = data_dir
        self.passed = False  # --check: every step behaved
        self.failed = False  # seeding or driving the server failed
        self.http = requests.Session()
        self.reviewer: Any = None  # storage.admins.NewAdmin: the demo reviewer, TOTP secret included
        self.review_withdrawal_id: str | None = None  # carol's, waiting for a reviewer in the console
        self.staff_token = ""  # the demo auditor's admin API token, made when the users are seeded

    # -- runs in the server's on-listening thread ----------------------------------------------------------
    def on_listening(self, server: WalletServer) -> None:
        try:
            self._wait_healthy(server.url + "/healthz", server.ops_url + "/readyz")
            self._seed(server)
            steps = walkthrough()
            if self.check:
                self.passed = self._run_steps(server.url, steps)
                print("\n".join(self._console_lines(server.url)), flush=True)
                complaint = self._check_console(server.url)
                print(f"{'ok  ' if complaint is None else 'FAIL'} console: the demo reviewer logs in (password + "
                      "TOTP) and approves carol's withdrawal" + ("" if complaint is None else f"\n        {complaint}"),
                      flush=True)
                self.passed = self.passed and complaint is None
                self.passed = self._reconciled(server) and self.passed
            else:
                print(self._banner(server, steps), flush=True)
        except Exception:  # noqa: BLE001 - any failure of the demo's own driving fails the demo
            log.exception("demo failed")
            print(f"demo failed; see {self.data_dir / 'wallet.log'}", flush=True)
            self.failed = True
            server.stop()
        finally:
            if self.check:
                server.stop()
            self.http.close()

    def _reconciled(self, server: WalletServer) -> bool:
        """The ledger against the chain at one block (treasury/reconcile.py): every wei explained."""
        from core import messages as m

        summary = server.system.router.ask_actor("reconciler", m.RunReconcile(), timeout=60)
        clean = summary.error is None and summary.clean
        detail = summary.error or (f"block {summary.block_number}, " +
                                   ("no drift" if clean else f"drift {dict(summary.drift)}"))
        print(f"{'ok  ' if clean else 'FAIL'} reconciliation: {detail}", flush=True)
        return clean

    def _wait_healthy(self, api_health_url: str, ready_url: str) -> None:
        """The API answers (its socket is bound once the worker runs) and the operations listener says ready."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if self.http.get(api_health_url, timeout=2).status_code == 200 and \
                        self.http.get(ready_url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    def _seed(self, server: WalletServer) -> None:
        """Registers the demo users and sends each a deposit from the dev account (the demo always runs a
        block watcher: its chain is configured as WALLET_RPC_URLS)."""
        for name in DEMO_USERS:
            answer = self.http.post(server.url + "/api/v1/accounts", timeout=HTTP_TIMEOUT_S, json={
                "username": name, "password": password_of(name), "pay_password": PAY_PASSWORD})
            if answer.status_code != 201:
                raise RuntimeError(f"registering {name} failed: {answer.status_code} {answer.text[:300]}")
            self.chain.send_transaction(answer.json()["deposit_address"], SEED_WEI)
        self.staff_token = admins.create_admin(DEMO_STAFF, "auditor").token  # reads the admin API, changes nothing
        hot = walletkeys.wallet_address("hot")
        self.chain.send_transaction(hot, HOT_WALLET_SEED_WEI)  # the hot wallet that pays withdrawals
        confirm_s = (server.config.confirmations + 2) * self.chain.block_interval_s
        for name in DEMO_USERS:
            self._wait_balance(server.url, name, SEED_WEI, READY_TIMEOUT_S + confirm_s)
        self._seed_review(server)

    def _seed_review(self, server: WalletServer) -> None:
        """The console's demo reviewer (as `wallet admin create` makes staff), and a withdrawal of carol's above
        the auto-approval, so a newcomer has something to approve in the browser."""
        from storage import admins
        from web.security import hash_secret

        self.reviewer = admins.create_admin(DEMO_REVIEWER, "reviewer", hash_secret(DEMO_REVIEWER_PASSWORD),
                                            server.config.key_ring())
        token = self._login(server.url, "carol")
        answer = self.http.post(server.url + "/api/v1/withdrawals", timeout=HTTP_TIMEOUT_S, json={
            "asset": "ETH", "to_address": DEMO_RECIPIENT, "amount": str(REVIEW_WITHDRAWAL_WEI),
            "pay_password": PAY_PASSWORD, "speed": "standard"},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "demo-review-1"})
        if answer.status_code != 202:
            raise RuntimeError(f"carol's withdrawal was refused: {answer.status_code} {answer.text[:300]}")
        self.review_withdrawal_id = answer.json()["id"]

    def _wait_balance(self, base_url: str, username: str, wei: int, timeout_s: float) -> None:
        token = self._login(base_url, username)
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.http.get(base_url + "/api/v1/balances", timeout=HTTP_TIMEOUT_S,
                                   headers={"Authorization": f"Bearer {token}"})
            if answer.status_code == 200 and _eth(answer.json()) == (wei, 0):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{username} was not funded within {timeout_s:.0f} s: {answer.text[:300]}")
            time.sleep(0.1)

    def _login(self, base_url: str, username: str) -> str:
        answer = self.http.post(base_url + "/api/v1/sessions", timeout=HTTP_TIMEOUT_S,
                                json={"username": username, "password": password_of(username)})
        answer.raise_for_status()
        return answer.json()["token"]

    # -- --check -------------------------------------------------------------------------------------------
    def _run_steps(self, base_url: str, steps: list[Step]) -> bool:
        tokens: dict[str, str] = {}
        ctx: dict[str, Any] = {}
        ok = True
        for number, step in enumerate(steps, 1):
            complaint = self._run_step(base_url, step, tokens, ctx)
            print(f"{'ok  ' if complaint is None else 'FAIL'} {number:2}. {step.title}"
                  + ("" if complaint is None else f"\n        {complaint}"), flush=True)
            ok = ok and complaint is None
        return ok

    def _run_step(self, base_url: str, step: Step, tokens: dict[str, str], ctx: dict[str, Any]) -> str | None:
        headers = {}
        if step.as_user:
            headers["Authorization"] = f"Bearer {tokens.get(step.as_user, '')}"
        if step.as_staff:
            headers["Authorization"] = f"Bearer {self.staff_token}"
        if step.idempotency_key:
            headers["Idempotency-Key"] = step.idempotency_key
        deadline = time.monotonic() + step.wait_s
        while True:
            path = step.path
            for name in ("CODE", "PACKET_ID"):
                path = path.replace("$" + name, str(ctx.get(name, "")))
            answer = self.http.request(step.method, base_url + path, json=step.body, headers=headers,
                                       timeout=HTTP_TIMEOUT_S)
            body = answer.json() if answer.content else None
            complaint = (f"HTTP {answer.status_code}, expected {step.status}: {answer.text[:300]}"
                         if answer.status_code != step.status else (step.check(body, ctx) if step.check else None))
            if complaint is None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if complaint is None and step.save_token_of:
            tokens[step.save_token_of] = body["token"]
        return complaint

    def _check_console(self, base_url: str) -> str | None:
        """What the banner tells a newcomer to do in a browser, over HTTP: log in with the printed credentials,
        find carol's withdrawal in the queue, approve it; it leaves `reviewing`."""
        import pyotp

        console = requests.Session()
        login = console.get(base_url + "/admin/login", timeout=HTTP_TIMEOUT_S)
        answer = console.post(base_url + "/admin/login", timeout=HTTP_TIMEOUT_S, allow_redirects=False, data={
            "csrf_token": CSRF_RE.search(login.text).group(1), "name": DEMO_REVIEWER,
            "password": DEMO_REVIEWER_PASSWORD, "code": pyotp.TOTP(self.reviewer.totp_secret).now()})
        if answer.status_code != 302:
            return f"login refused: HTTP {answer.status_code}"
        queue = console.get(base_url + "/admin/withdrawals", timeout=HTTP_TIMEOUT_S)
        if f'id="approve-{self.review_withdrawal_id}"' not in queue.text:
            return f"withdrawal {self.review_withdrawal_id} is not in the review queue"
        console.post(f"{base_url}/admin/withdrawals/{self.review_withdrawal_id}/approve", timeout=HTTP_TIMEOUT_S,
                     data={"csrf_token": CSRF_RE.search(queue.text).group(1)})
        from storage.models import Withdrawal

        status = Withdrawal.get_by_id(int(self.review_withdrawal_id)).status
        return None if status != "reviewing" else "the approval did not move the withdrawal"

    # -- interactive ---------------------------------------------------------------------------------------
    def _console_lines(self, base: str) -> list[str]:
        return [
            f"  console    {base}/admin   (the review page; demo credentials, printed because this is a demo)",
            f"             staff name {DEMO_REVIEWER}, password {DEMO_REVIEWER_PASSWORD}",
            f"             TOTP secret {self.reviewer.totp_secret} (add it to an authenticator app, or: "
            f"python3 -c 'import pyotp; print(pyotp.TOTP(\"{self.reviewer.totp_secret}\").now())')",
            f"             {self.reviewer.totp_uri}",
            f"             carol's withdrawal {self.review_withdrawal_id} of {REVIEW_WITHDRAWAL_WEI / ONE_ETH:g} ETH waits "
            "in the review queue: approve it and watch it reach broadcast",
        ]

    def _banner(self, server: WalletServer, steps: list[Step]) -> str:
        base, ops = server.url, server.ops_url
        seeded = (f"each got {SEED_WEI // ONE_ETH} ETH as a real deposit on the demo chain, credited after "
                  f"{server.config.confirmations} confirmations")
        lines = [
            "",
            "Wallet demo is running. Ctrl-C stops it (and deletes its data unless --keep-data).",
            f"  API        {base}/api/v1   (OpenAPI: {base}/api/v1/openapi.json)",
            f"  health     {base}/healthz; operations (loopback) {ops}/readyz  {ops}/metrics",
            f"  chain      {self.chain.url}  (JSON-RPC, chain id {self.chain.chain_id}, "
            f"a block every {self.chain.block_interval_s:g} s)",
            f"  database   {server.config.database_url}",
            f"  logs       {self.data_dir / 'wallet.log'}",
            f"  users      {', '.join(DEMO_USERS)}; password <name>-password, pay password {PAY_PASSWORD}",
            f"             {seeded}",
            "",
            *self._console_lines(base),
            f"  staff      {DEMO_STAFF} (auditor, read-only): export ADMIN_TOKEN={self.staff_token}",
            "",
            "Try it (copy each line into a shell):",
        ]
        for number, step in enumerate(steps, 1):
            lines += [f"# {number}. {step.title}", step.curl(base)]
        lines += ["", "Check the ledger's invariants at any time:",
                  f"WALLET_DATABASE_URL={server.config.database_url} {_wallet_command()} audit", ""]
        return "\n".join(lines)


def _wallet_command() -> str:
    """How this process was started (`.venv/bin/wallet` under make), so the printed line runs as is."""
    started_as = sys.argv[0]
    return shlex.quote(started_as) if os.path.basename(started_as) == "wallet" else "wallet"


def prepare_database(config: Config) -> None:
    """Schema, system accounts and a small address pool, as `wallet init --pool` would."""
    from app.provision import provision
    from storage.db import connect_database

    db = connect_database(config.database_url)
    provision(db, config.shards, POOL_SIZE, config.key_ring())
    db.close()


def demo_config(chain: EmbeddedChain, database_path: Path, http: str, ops_http: str) -> Config:
    env = {key: value for key, value in os.environ.items() if key in ("WALLET_CONFIRMATIONS", "WALLET_SHARDS")}
    base = Config.from_env(env)
    confirmations = base.confirmations if "WALLET_CONFIRMATIONS" in env else DEMO_CONFIRMATIONS
    return dataclasses.replace(
        base, database_url=f"sqlite:///{database_path}", redis_url=None, rpc_urls=(chain.url,),
        chain_id=chain.chain_id, confirmations=confirmations, http=http, ops_http=ops_http, start_block=0,
        withdraw_auto_approve_below=(("ETH", DEMO_AUTO_APPROVE_WEI),),
        # the hot wallet's seed is the operator's money, not a deposit: the reconciliation expects it
        reconcile_float=(("ETH", HOT_WALLET_SEED_WEI),),
        sweep_min=(("ETH", DEMO_SWEEP_MIN_WEI),)).with_demo_defaults()


def _log_to_file(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]


def run_demo(check: bool = False, block_interval_s: float = 2.0, keep_data: bool = False) -> int:
    http = os.environ.get("WALLET_HTTP") or (f"127.0.0.1:{free_port()}" if check else "127.0.0.1:8000")
    ops_http = os.environ.get("WALLET_OPS_HTTP") or (f"127.0.0.1:{free_port()}" if check else "127.0.0.1:8001")
    host, _, port = http.rpartition(":")
    check_can_listen(host, int(port))  # before anything is created
    ops_host, _, ops_port = ops_http.rpartition(":")
    check_can_listen(ops_host, int(ops_port), variable="WALLET_OPS_HTTP")
    data_dir = DEMO_ROOT / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    data_dir.mkdir(parents=True, exist_ok=True)
    _log_to_file(data_dir / "wallet.log")
    print(f"starting the demo (data and logs in {data_dir}) ...", flush=True)
    chain = EmbeddedChain(block_interval_s=block_interval_s).start()
    try:
        config = demo_config(chain, data_dir / "wallet.sqlite3", http, ops_http)
        prepare_database(config)
        demo = Demo(chain, check, data_dir)
        code = WalletServer(config).run(on_listening=demo.on_listening)
    finally:
        chain.stop()
    if check:
        code = code or _report_check(demo, config)
    elif demo.failed:
        code = code or 1
    if code == 0 and not keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    elif code != 0:
        print(f"kept {data_dir} for inspection", flush=True)
    return code


def _report_check(demo: Demo, config: Config) -> int:
    from storage.db import connect_database
    from app.audit import run_audit

    connect_database(config.database_url)
    report = run_audit()
    print(f"{'ok  ' if report.ok else 'FAIL'} audit: {len(report.violations)} violations, "
          f"{report.operations} operations", flush=True)
    for violation in report.violations:
        print(f"        {violation}", flush=True)
    passed = demo.passed and report.ok
    print("demo check passed" if passed else "demo check FAILED", flush=True)
    return 0 if passed else 1
