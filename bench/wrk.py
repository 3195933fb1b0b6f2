"""Driving `wallet serve` with wrk (Debian's package): the shared Lua (per-thread ids, a JSON summary line)
and one timed run with the server's CPU per request. Used by bench/http.py and bench/withdrawals.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

import common
from app.system import ActorSystem
from core import messages as m
from core.config import Config
from devnet.waiting import wait_until
from storage.db import connect_database
from storage.models import Account
from web.security import hash_secret

REDIS_URL = os.environ.get("WALLET_BENCH_REDIS", "redis://127.0.0.1:6379/0")
# WALLET_BENCH_SERVER: another `wallet` entry point (a profiling wrapper, say).
WALLET = os.environ.get("WALLET_BENCH_SERVER") or str(Path(sys.executable).with_name("wallet"))
PASSWORD, PAY_PASSWORD = "bench-password", "bench-pay-123"
FUND_WEI = 10**24
START_TIMEOUT_S = 60.0

LUA_TRANSFERS = r"""
function request()
  counter = counter + 1
  local from = math.random(#tokens)
  local to = math.random(#tokens - 1)
  if to >= from then to = to + 1 end
  local body = '{"to_username": "' .. names[to] .. '", "asset": "ETH", "amount": "1", "pay_password": "'
    .. pay_password .. '"}'
  return wrk.format("POST", "/api/v1/transfers", {
    ["Authorization"] = "Bearer " .. tokens[from],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = run_id .. "-" .. id .. "-" .. counter}, body)
end
"""


def lua_data(tokens: list[str], names: list[str], run_id: str) -> str:
    return (f"tokens = {{{', '.join(json.dumps(t) for t in tokens)}}}\n"
            f"names = {{{', '.join(json.dumps(n) for n in names)}}}\n"
            f"pay_password = {json.dumps(PAY_PASSWORD)}\nrun_id = {json.dumps(run_id)}\n")


# wrk's Lua side: per-thread state, a fresh Idempotency-Key per transfer, and a JSON summary at the end.
LUA_COMMON = r"""
local threads = {}
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(id * 7919 + os.time())
  counter = 0
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(kind: str, path: str, base: str, script: str, args, server_pid: int) -> dict:  # noqa: ANN001
    """One timed run of `args.seconds` over `args.connections` keep-alive connections (`args.wrk_threads`)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cpu_before = cpu_seconds(server_pid)
    try:
        out = subprocess.run(["wrk", "-t", str(args.wrk_threads), "-c", str(args.connections), "-d",
                              f"{args.seconds}s", "--timeout", "10s", "-s", f.name, base + path],
                             capture_output=True, text=True, timeout=args.seconds + 60, check=True).stdout
    finally:
        os.unlink(f.name)
    server_cpu_s = cpu_seconds(server_pid) - cpu_before
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("WRKJSON "))[len("WRKJSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = raw["non2xx"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {"kind": kind, "requests": raw["requests"], "seconds": round(seconds, 2),
            "per_second": round(raw["requests"] / seconds), "errors": errors,
            "p50_ms": round(raw["p50_us"] / 1000, 2), "p90_ms": round(raw["p90_us"] / 1000, 2),
            "p99_ms": round(raw["p99_us"] / 1000, 2), "max_ms": round(raw["max_us"] / 1000, 2),
            # CPU the server process spent per request: robust to other load on the machine, and
            # 1e6 / it is what one core running its Python (one GIL) could serve.
            "server_cpu_us_per_request": round(server_cpu_s / max(1, raw["requests"]) * 1e6),
            "server_cpu_cores": round(server_cpu_s / seconds, 2),
            "load_after": common.load_average()}


def prepare_users(url: str, config: Config, count: int) -> list[str]:
    """Bulk-insert `count` users with one shared password hash, fund each through the actors, stop them."""
    db = connect_database(url)
    accounts = common.create_accounts(db, count, config.shards, prefix="bench")
    pw_hash, pay_hash = hash_secret(PASSWORD), hash_secret(PAY_PASSWORD)
    Account.update(password_hash=pw_hash, pay_password_hash=pay_hash).where(Account.kind == "user").execute()
    system = ActorSystem(config).start()
    try:
        for account_id, _ in accounts:
            system.router.command(m.Credit(op_id=f"fund-{account_id}", account_id=account_id, asset="ETH",
                                           amount=FUND_WEI))
    finally:
        system.stop()
    db.close_all()
    return [f"bench-{i}" for i in range(count)]


def start_server(config: Config, port: int, threads: int, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    env.update(extra_env or {})
    env.update(WALLET_DATABASE_URL=config.database_url, WALLET_REDIS_URL=config.redis_url,
               WALLET_REDIS_PREFIX=config.redis_prefix, WALLET_MASTER_KEY=config.master_key.hex(),
               WALLET_SHARDS=str(config.shards), WALLET_HTTP=f"127.0.0.1:{port}")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([WALLET, "--log-level", "WARNING", "serve", "--threads", str(threads)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"wallet serve exited with {proc.returncode}; see {log_path}")
        return requests.get(base + "/healthz", timeout=1).status_code == 200

    wait_until(healthy, START_TIMEOUT_S, f"wallet serve to answer /healthz (log: {log_path})", interval_s=0.05,
               ignore=(requests.RequestException,))
    return proc


def log_in_and_warm_up(base: str, names: list[str]) -> list[str]:
    """Log every user in and make one transfer each (the session's one argon2 pay-password check)."""
    http = requests.Session()
    tokens = []
    for name in names:
        answer = http.post(base + "/api/v1/sessions", json={"username": name, "password": PASSWORD}, timeout=30)
        answer.raise_for_status()
        tokens.append(answer.json()["token"])
    for i, token in enumerate(tokens):
        answer = http.post(base + "/api/v1/transfers", timeout=30, json={
            "to_username": names[(i + 1) % len(names)], "asset": "ETH", "amount": "1", "pay_password": PAY_PASSWORD},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"warm-up-{i}"})
        if answer.status_code != 201:
            raise RuntimeError(f"warm-up transfer failed: {answer.status_code} {answer.text[:300]}")
    return tokens
