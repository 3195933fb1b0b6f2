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
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

import redis

import common
import wrk
from storage.db import connect_database
from storage.models import Operation, Outbox
from app.audit import run_audit
from core.config import Config
from core.ports import free_port

DRAIN_TIMEOUT_S = 60.0
TARGETS = {"transfers": 1500, "balances": 3000}
PATHS = {"healthz": "/healthz", "balances": "/api/v1/balances", "transfers": "/api/v1/transfers"}
P99_TARGET_MS = 50.0

LUA_BALANCES = r"""
function request()
  local i = math.random(#tokens)
  return wrk.format("GET", "/api/v1/balances", {["Authorization"] = "Bearer " .. tokens[i]})
end
"""

LUA_TRANSFERS = wrk.LUA_TRANSFERS


def lua_script(kind: str, tokens: list[str], names: list[str], run_id: str) -> str:
    body = {"healthz": "", "balances": LUA_BALANCES, "transfers": LUA_TRANSFERS}[kind]
    return wrk.lua_data(tokens, names, run_id) + wrk.LUA_COMMON + body


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
    p.add_argument("--kinds", default="healthz,balances,transfers",
                   help="comma list of the timed runs (e.g. `transfers` alone, to profile the server during it)")
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
        config = Config(database_url=url, redis_url=wrk.REDIS_URL, redis_prefix=prefix, master_key=common.MASTER_KEY,
                        shards=args.shards)
        names = wrk.prepare_users(url, config, args.users)
        port = free_port()
        proc = wrk.start_server(config, port, args.threads, Path(tmp) / "serve.log")
        db = connect_database(url)  # this process reads the outcome; the server owns the actors
        try:
            try:
                base = f"http://127.0.0.1:{port}"
                tokens = wrk.log_in_and_warm_up(base, names)
                runs = [wrk.run_wrk(kind, PATHS[kind], base, lua_script(kind, tokens, names, prefix), args, proc.pid)
                        for kind in args.kinds.split(",")]
                report["outbox_drain_s"] = wait_outbox_drained()
            finally:
                proc.send_signal(signal.SIGTERM)
                report["serve_exit_code"] = proc.wait(timeout=60)
            report["runs"] = runs
            answered = sum(r["requests"] - r["errors"] for r in runs if r["kind"] == "transfers")
            report["ledger"] = check_ledger(answered, len(names), args.connections)
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
    client = redis.Redis.from_url(wrk.REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
