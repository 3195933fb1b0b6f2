"""Running the real `wallet` command as a separate process: start, wait until it answers, SIGTERM, SIGKILL.

Nothing here sleeps to wait: readiness is polled with `wait_until`, and a process that dies while we wait
fails the wait at once with its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from core import messages as m
from core.ports import free_port
from tests.helpers import start_system, wait_until
from web.security import hash_secret

WALLET = str(Path(sys.executable).with_name("wallet"))
PAY_PASSWORD = "pay-123456"
START_TIMEOUT_S = 60.0


def password_of(username: str) -> str:
    return f"{username}-password"


def wallet_env(config, port: int | None = None) -> dict[str, str]:
    """The environment of a `wallet` process for this test's config (nothing inherited from WALLET_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    env.update(WALLET_DATABASE_URL=config.database_url, WALLET_MASTER_KEY=config.master_key.hex(),
               WALLET_SHARDS=str(config.shards), WALLET_CONFIRMATIONS=str(config.confirmations))
    if config.redis_url:
        env.update(WALLET_REDIS_URL=config.redis_url, WALLET_REDIS_PREFIX=config.redis_prefix)
    if port is not None:
        env["WALLET_HTTP"] = f"127.0.0.1:{port}"
    env["WALLET_OPS_HTTP"] = f"127.0.0.1:{free_port()}"  # never the shared default: tests run side by side
    return env


def prepare(config, users: dict[str, int], pool: int = 40) -> dict[str, tuple[int, int]]:
    """Schema, pool, and `users` {name: wei} registered with the front's password hashing and funded,
    through the actors in this process (they stop before `wallet serve` starts: one owner at a time).
    Returns {name: (account_id, shard)}."""
    system = start_system(config, pool)
    try:
        accounts = {}
        pw_hash, pay_hash = {}, hash_secret(PAY_PASSWORD)
        for name, wei in users.items():
            pw_hash[name] = hash_secret(password_of(name))
            registered = system.router.ask_actor("allocator", m.Register(name, pw_hash[name], pay_hash))
            accounts[name] = (registered.account_id, registered.shard)
            if wei:
                system.router.command(m.Credit(op_id=f"fund-{name}", account_id=registered.account_id,
                                               asset="ETH", amount=wei))
    finally:
        system.stop()
    return accounts


class ServeProcess:
    """`wallet serve` in a child process, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.url = "http://" + env["WALLET_HTTP"]
        self.ops_url = "http://" + env["WALLET_OPS_HTTP"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([WALLET, "serve", *self.args], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        wait_until(self._healthy, timeout_s=timeout_s, interval_s=0.05, what=f"wallet serve healthy at {self.url}",
                   ignore=(requests.RequestException,), detail=self.log_tail)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:  # it died: fail at once, not at the deadline
            raise AssertionError(f"wallet serve exited with {self.proc.returncode}:\n{self.log_tail()}")
        return requests.get(self.url + "/healthz", timeout=1).status_code == 200

    def terminate(self, timeout_s: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            dump = self._stacks()
            raise AssertionError(f"wallet serve still running {timeout_s} s after SIGTERM\n{dump}\n"
                                 f"{self.log_tail()}") from None

    def _stacks(self) -> str:
        """What every thread of the process is doing (py-spy, if installed): why it does not stop."""
        spy = Path(sys.executable).with_name("py-spy")
        if not spy.exists():
            return "(py-spy not installed: no thread dump)"
        try:
            return subprocess.run([str(spy), "dump", "--pid", str(self.proc.pid)], capture_output=True, text=True,
                                  timeout=30).stdout
        except (subprocess.SubprocessError, OSError) as exc:
            return f"(py-spy failed: {exc})"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def login(session: requests.Session, base_url: str, username: str) -> str:
    answer = session.post(base_url + "/api/v1/sessions", timeout=10,
                          json={"username": username, "password": password_of(username)})
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


def eth_balance(session: requests.Session, base_url: str, token: str) -> tuple[int, int]:
    answer = session.get(base_url + "/api/v1/balances", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    rows = {row["asset"]: (int(row["available"]), int(row["frozen"])) for row in answer.json()["balances"]}
    return rows.get("ETH", (0, 0))
