"""The HTTP front under load: `wallet serve` on MariaDB + Redis, driven by wrk over keep-alive connections.

One run, one fresh MariaDB database and Redis prefix:

1. U users are inserted in bulk (one argon2 hash shared by all: registration is not what is measured),
   funded by ledger credits through the actors in this process, which then stop; `wallet serve` starts as
   a child process (the only owner of the actors from then on).
2. Every user logs in over HTTP, and makes one transfer, so the session's first pay-password check
   (argon2, ~30 ms, by design once per session) is not part of the timed runs.
3. Three timed wrk runs against the same server, C connections each:
   - GET /healthz: the ceiling of the HTTP stack (granian + Flask + the request hooks, no actor);
   - GET /api/v1/balances as a random user: session lookup + an ask to the user's shard;
   - POST /api/v1/transfers from a random user to another random user (3/4 on another shard), each
     request with a fresh Idempotency-Key: pay-password memo, Redis in-flight mark, the shard's group
     commit in MariaDB, the outbox for cross-shard credits.
   wrk reports requests/s and latency percentiles; any non-2xx answer or socket error counts as an error.
4. Afterwards: the outbox drains, the number of transfer operations in the database matches the 201s
   wrk counted (plus the warm-up ones, plus at most one per connection still in flight when wrk stopped
   its clock), and `wallet audit` passes.

    .venv/bin/python bench/http.py [--users 64] [--connections 32] [--seconds 10] [--json out.json]

wrk comes from Debian (`make bench` installs it when missing).
"""

from __future__ import annotations

import sys

# `python bench/http.py` puts bench/ first on the path, where this file would shadow the standard library's
# `http` package; look bench/ up last instead (for `import common`).
sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402 - after the path fix above
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import requests

import common
from core import messages as m
from storage.db import connect_database
from storage.models import Account, Operation, Outbox
from app.audit import run_audit
from core.config import Config
from app.system import ActorSystem
from web.security import hash_secret
from core.ports import free_port
from devnet.waiting import wait_until

REDIS_URL = os.environ.get("WALLET_BENCH_REDIS", "redis://127.0.0.1:6379/0")
WALLET = str(Path(sys.executable).with_name("wallet"))
PASSWORD, PAY_PASSWORD = "bench-password", "bench-pay-123"
FUND_WEI = 10**24
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0
TARGETS = {"transfers": 1500, "balances": 3000}
P99_TARGET_MS = 50.0

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

LUA_BALANCES = r"""
function request()
  local i = math.random(#tokens)
  return wrk.format("GET", "/api/v1/balances", {["Authorization"] = "Bearer " .. tokens[i]})
end
"""

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


def lua_script(kind: str, tokens: list[str], names: list[str], run_id: str) -> str:
    data = (f"tokens = {{{', '.join(json.dumps(t) for t in tokens)}}}\n"
            f"names = {{{', '.join(json.dumps(n) for n in names)}}}\n"
            f"pay_password = {json.dumps(PAY_PASSWORD)}\nrun_id = {json.dumps(run_id)}\n")
    body = {"healthz": "", "balances": LUA_BALANCES, "transfers": LUA_TRANSFERS}[kind]
    return data + LUA_COMMON + body


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


def start_server(config: Config, port: int, threads: int, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(kind: str, base: str, script: str, args: argparse.Namespace, server_pid: int) -> dict:
    path = {"healthz": "/healthz", "balances": "/api/v1/balances", "transfers": "/api/v1/transfers"}[kind]
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


def wait_outbox_drained() -> float:
    """Seconds until every cross-shard credit is applied by the running server."""
    started = time.monotonic()
    while Outbox.select().where(Outbox.delivered_at.is_null()).count():
        if time.monotonic() > started + DRAIN_TIMEOUT_S:
            raise RuntimeError("the outbox did not drain")
        time.sleep(0.1)
    return round(time.monotonic() - started, 2)


def check_ledger(transfers_answered: int, warm_ups: int, in_flight_max: int) -> dict:
    """Every 201 is an operation, and the audit passes. wrk stops the clock with up to one request per
    connection in flight: those are applied but not counted, hence the range."""
    operations = Operation.select().where(Operation.kind == "transfer").count()
    low = transfers_answered + warm_ups
    audit = run_audit()
    return {"transfer_operations": operations, "expected": f"{low}..{low + in_flight_max}",
            "ok": audit.ok and low <= operations <= low + in_flight_max, "audit_ok": audit.ok,
            "violations": audit.violations[:10]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=64, help="users logged in (random sender/recipient per request)")
    p.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (each drives connections/threads)")
    p.add_argument("--seconds", type=int, default=10, help="duration of each timed run")
    p.add_argument("--threads", type=int, default=64, help="`wallet serve --threads`")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: `apt-get install wrk` (make bench installs it)", file=sys.stderr)
        return 2
    prefix = f"wallet-bench-{secrets.token_hex(4)}"
    report: dict = {"machine": common.machine_facts(), "args": vars(args), "uptime_before": common.uptime()}
    with common.bench_database() as url, tempfile.TemporaryDirectory() as tmp:
        config = Config(database_url=url, redis_url=REDIS_URL, redis_prefix=prefix, master_key=common.MASTER_KEY,
                        shards=args.shards)
        names = prepare_users(url, config, args.users)
        port = free_port()
        proc = start_server(config, port, args.threads, Path(tmp) / "serve.log")
        db = connect_database(url)  # this process reads the outcome; the server owns the actors
        try:
            try:
                base = f"http://127.0.0.1:{port}"
                tokens = log_in_and_warm_up(base, names)
                runs = [run_wrk(kind, base, lua_script(kind, tokens, names, prefix), args, proc.pid)
                        for kind in ("healthz", "balances", "transfers")]
                report["outbox_drain_s"] = wait_outbox_drained()
            finally:
                proc.send_signal(signal.SIGTERM)
                report["serve_exit_code"] = proc.wait(timeout=60)
            report["runs"] = runs
            transfers = next(r for r in runs if r["kind"] == "transfers")
            report["ledger"] = check_ledger(transfers["requests"] - transfers["errors"], len(names),
                                            args.connections)
            report["server"] = common.server_facts(db)
        finally:
            db.close_all()
    _drop_redis_prefix(prefix)
    report["uptime_after"] = common.uptime()
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    ledger = report["ledger"]
    return 0 if ledger["ok"] else 1


def print_report(report: dict) -> None:
    for run in report["runs"]:
        target = TARGETS.get(run["kind"])
        verdict = "" if target is None else (
            f"  (target >= {target}/s, p99 <= {P99_TARGET_MS:g} ms: "
            f"{'met' if run['per_second'] >= target and run['p99_ms'] <= P99_TARGET_MS else 'NOT met'})")
        print(f"{run['kind']:>9}: {run['per_second']:>6}/s  p50 {run['p50_ms']} ms  p90 {run['p90_ms']} ms  "
              f"p99 {run['p99_ms']} ms  max {run['max_ms']} ms  errors {run['errors']}  "
              f"({run['requests']} in {run['seconds']} s; server {run['server_cpu_us_per_request']} us CPU/request, "
              f"{run['server_cpu_cores']} cores){verdict}")
    ledger = report["ledger"]
    print(f"ledger: {ledger['transfer_operations']} transfer operations (expected {ledger['expected']}), "
          f"audit ok={ledger['audit_ok']}; wallet serve exit code {report['serve_exit_code']}")
    print(f"server: {report['server']}")
    print(f"machine: {report['machine']}")
    print(f"before: {report['uptime_before']}\nafter:  {report['uptime_after']}")


def _drop_redis_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
