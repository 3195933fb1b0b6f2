"""Red-packet claims per second on hot packets, through the actors and through HTTP, each against the transfer
rate measured in the same run on the same database.

One run, one fresh MariaDB database (and Redis prefix for the HTTP half):

1. actors (in this process, the real ActorSystem, 4 shards):
   - baseline: S sender threads each keep K `Transfer` asks in flight to its own shard, half the transfers to
     an account on another shard (as bench/transfers.py);
   - claims: one sender account on shard 0 opens P packets of 10,000 shares; S threads keep K `ClaimRedPacket`
     asks in flight, all to shard 0 (the sender's shard serialises every claim of its packets), the packets
     claimed one after the other; half the claimants live on shard 0, half on the other shards (credited
     through the outbox). A claim counts when its future resolves (after the batch committed).
   Then the outbox drains and `wallet audit` must pass.
2. HTTP (`wallet serve` as a child process, MariaDB + Redis, driven by wrk over keep-alive connections):
   `POST /api/v1/transfers` (random sender and recipient, fresh Idempotency-Key each), then
   `POST /api/v1/red-packets/<code>/claim` (request k: claimant k mod U, packet k div U, so every claim is a
   first claim and succeeds), then transfers again (the machine drifts: the claims are compared with the
   mean of the two transfer runs around them). Claimants' sessions are inserted directly (logins are not what
   is measured); transfer users log in and make one warm-up transfer (the session's one argon2 pay check).
   Then the outbox drains, every 2xx is in the database, and `wallet audit` passes.

    .venv/bin/python bench/red_packets.py [--claims-packets 4] [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import sys

# `python bench/x.py` puts bench/ first on the path, where bench/http.py would shadow the standard
# library's `http` package; look bench/ up last instead (for `import common`).
sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402 - after the path fix above
import collections
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pykka
import redis
import requests

import common
from app.audit import run_audit
from app.system import ActorSystem
from core import messages as m
from core.config import Config
from core.errors import WalletError
from core.ports import free_port
from devnet.waiting import wait_until
from storage import sql
from storage.db import connect_database
from storage.models import Account, Operation, Outbox, RedPacketClaim, now_ms
from web.security import hash_secret, token_hash

REDIS_URL = os.environ.get("WALLET_BENCH_REDIS", "redis://127.0.0.1:6379/0")
WALLET = str(Path(sys.executable).with_name("wallet"))
PASSWORD, PAY_PASSWORD = "bench-password", "bench-pay-123"
FUND_WEI = 10**24
SHARES = 10_000
FUTURE_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0
ACTOR_TARGET = 5_000
HTTP_RATIO_TARGET = 0.8


# -- the actors ----------------------------------------------------------------------------------------------


def run_asks(refs: list, parts: list[list[m.MoneyCommand]], window: int) -> dict:
    """Each part from its own thread, `window` asks in flight, answers collected oldest first."""
    latencies: list[list[float]] = [[] for _ in parts]
    errors = [0] * len(parts)
    gate = threading.Barrier(len(parts) + 1)

    def sender(index: int) -> None:
        inflight: collections.deque = collections.deque()
        clock = time.perf_counter
        gate.wait()
        for ref, command in parts[index]:
            if len(inflight) >= window:
                errors[index] += _collect(inflight.popleft(), latencies[index], clock)
            inflight.append((ref.ask(command, block=False), clock()))
        while inflight:
            errors[index] += _collect(inflight.popleft(), latencies[index], clock)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(len(parts))]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    lat = sorted(x for part in latencies for x in part)
    done = sum(len(p) for p in parts) - sum(errors)
    return {"count": done, "errors": sum(errors), "seconds": round(seconds, 3), "per_second": round(done / seconds),
            "p50_ms": round(common.percentile(lat, 50) * 1000, 2), "p99_ms": round(common.percentile(lat, 99) * 1000, 2)}


def _collect(item: tuple[pykka.Future, float], latencies: list[float], clock) -> int:
    future, sent = item
    try:
        future.get(timeout=FUTURE_TIMEOUT_S)
    except WalletError:
        return 1
    latencies.append(clock() - sent)
    return 0


def wait_drained(system: ActorSystem) -> float:
    started = time.perf_counter()

    def drained() -> bool:
        stats = [system.router.ask_shard(s, m.GetStats()) for s in range(system.router.shard_count)]
        return all(s.outbox_undelivered == 0 and s.queue_depth == 0 for s in stats)

    wait_until(drained, DRAIN_TIMEOUT_S, "every shard's outbox acknowledged", interval_s=0.05)
    return round(time.perf_counter() - started, 3)


def transfers_plan(by_shard: dict[int, list[int]], count: int, rng: random.Random, prefix: str) -> list[list]:
    shards = sorted(by_shard)
    parts: list[list] = [[] for _ in shards]
    for n in range(count):
        src_shard = shards[n % len(shards)]
        dst_shard = rng.choice([s for s in shards if s != src_shard]) if rng.random() < 0.5 else src_shard
        src = rng.choice(by_shard[src_shard])
        dst = src
        while dst == src:
            dst = rng.choice(by_shard[dst_shard])
        parts[src_shard].append(m.Transfer(op_id=f"{prefix}{n}", account_id=src, to_account=dst, to_shard=dst_shard,
                                           asset="ETH", amount=rng.randint(1, 1000)))
    return parts


def bench_actors(url: str, accounts: list[tuple[int, int]], args: argparse.Namespace) -> dict:
    config = Config(database_url=url, master_key=common.MASTER_KEY, shards=args.shards, ask_timeout_s=FUTURE_TIMEOUT_S)
    system = ActorSystem(config).start()
    rng = random.Random(5)
    try:
        for account_id, shard in accounts:
            system.directory.remember(account_id, f"bench-{account_id}", shard)
        refs = [system.router.shard_ref(s) for s in range(args.shards)]
        futures = [refs[shard].ask(m.Credit(op_id=f"fund-{a}", account_id=a, asset="ETH", amount=FUND_WEI),
                                   block=False) for a, shard in accounts]
        for future in futures:
            future.get(timeout=FUTURE_TIMEOUT_S)
        by_shard: dict[int, list[int]] = collections.defaultdict(list)
        for account_id, shard in accounts:
            by_shard[shard].append(account_id)
        sender = by_shard[0][0]
        claimants = _claimants(by_shard, SHARES)

        # warm-up, then the baseline: transfers, every shard busy
        warm = transfers_plan(by_shard, 5_000, rng, "w")
        run_asks(refs, [[(refs[s], c) for c in part] for s, part in enumerate(warm)], args.window)
        wait_drained(system)
        plan = transfers_plan(by_shard, args.transfers, rng, "t")
        with common.CpuMeter() as cpu:
            transfers = run_asks(refs, [[(refs[s], c) for c in part] for s, part in enumerate(plan)], args.window)
            transfers["outbox_drain_s"] = wait_drained(system)
        transfers.update(cpu.per_item_us(transfers["count"]))

        # claims: every one on shard 0, packet after packet
        codes = []
        for p in range(args.claims_packets):
            created = refs[0].ask(m.CreateRedPacket(op_id=f"packet-{p}", account_id=sender, asset="ETH",
                                                    amount=SHARES * 10**6, shares=SHARES, mode="random",
                                                    expires_in_ms=3_600_000), timeout=FUTURE_TIMEOUT_S)
            codes.append(created.code)
        claims_plan = [(refs[0], m.ClaimRedPacket(op_id=f"c-{p}-{a}", account_id=a, claimant_shard=shard, code=code))
                       for p, code in enumerate(codes) for a, shard in claimants]
        parts = [claims_plan[i::args.senders] for i in range(args.senders)]
        batches_before = system.router.ask_shard(0, m.GetStats()).batches
        with common.CpuMeter() as cpu:
            claims = run_asks(refs, parts, args.window)
            claims["outbox_drain_s"] = wait_drained(system)
        claims.update(cpu.per_item_us(claims["count"]))
        claims["shard0_batches"] = system.router.ask_shard(0, m.GetStats()).batches - batches_before
        claims["claims_per_batch"] = round(claims["count"] / max(1, claims["shard0_batches"]), 1)
        claims["cross_shard"] = sum(1 for _, shard in claimants if shard != 0) * args.claims_packets
        claims["end_to_end_per_second"] = round(claims["count"] / (claims["seconds"] + claims["outbox_drain_s"]))
    finally:
        system.stop()
    return {"transfers": transfers, "claims": claims, "claims_over_transfers": round(
        claims["per_second"] / transfers["per_second"], 2), "load_after": common.load_average()}


def _claimants(by_shard: dict[int, list[int]], count: int) -> list[tuple[int, int]]:
    """Half on shard 0 (the packets' shard), half spread over the others, interleaved."""
    same = [(a, 0) for a in by_shard[0][1:]]
    others = [(a, s) for s in sorted(by_shard) if s != 0 for a in by_shard[s]]
    assert len(same) >= count // 2 and len(others) >= count - count // 2, "not enough accounts"
    mixed = []
    for i in range(count):
        mixed.append(same[i // 2] if i % 2 == 0 else others[i // 2])
    return mixed


# -- HTTP ------------------------------------------------------------------------------------------------------

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
    .. '"timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
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
    ["Authorization"] = "Bearer " .. tokens[from], ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = run_id .. "-" .. id .. "-" .. counter}, body)
end
"""

LUA_WARM = r"""
function request()
  local k = counter * nthreads + id - 1
  counter = counter + 1
  return wrk.format("GET", "/api/v1/balances", {["Authorization"] = "Bearer " .. claim_tokens[k % #claim_tokens + 1]})
end
"""

LUA_CLAIMS = r"""
function request()
  local k = counter * nthreads + id - 1
  counter = counter + 1
  local user = k % #claim_tokens + 1
  local packet = math.floor(k / #claim_tokens) % #codes + 1
  return wrk.format("POST", "/api/v1/red-packets/" .. codes[packet] .. "/claim",
    {["Authorization"] = "Bearer " .. claim_tokens[user]})
end
"""


def lua(kind: str, data: dict) -> str:
    lines = [f"{name} = {{{', '.join(json.dumps(v) for v in values)}}}" if isinstance(values, list)
             else f"{name} = {json.dumps(values)}" for name, values in data.items()]
    return "\n".join(lines) + "\n" + LUA_COMMON + {"transfers": LUA_TRANSFERS, "claims": LUA_CLAIMS,
                                                    "warm": LUA_WARM}[kind]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(kind: str, url: str, script: str, args: argparse.Namespace, server_pid: int,
            seconds: int | None = None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    before = cpu_seconds(server_pid)
    try:
        seconds = seconds or args.seconds
        out = subprocess.run(["wrk", "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{seconds}s",
                              "--timeout", "10s", "-s", f.name, url], capture_output=True, text=True,
                             timeout=seconds + 60, check=True).stdout
    finally:
        os.unlink(f.name)
    server_cpu_s = cpu_seconds(server_pid) - before
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("WRKJSON "))[len("WRKJSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = raw["non2xx"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {"kind": kind, "requests": raw["requests"], "seconds": round(seconds, 2),
            "per_second": round(raw["requests"] / seconds), "errors": errors, "p50_ms": round(raw["p50_us"] / 1000, 2),
            "p99_ms": round(raw["p99_us"] / 1000, 2), "max_ms": round(raw["max_us"] / 1000, 2),
            "server_cpu_us_per_request": round(server_cpu_s / max(1, raw["requests"]) * 1e6),
            "load_after": common.load_average()}


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

    wait_until(healthy, START_TIMEOUT_S, "wallet serve answering /healthz", interval_s=0.05,
               ignore=(requests.RequestException,))
    return proc


def bench_http(url: str, accounts: list[tuple[int, int]], args: argparse.Namespace) -> dict:
    prefix = f"wallet-bench-{secrets.token_hex(4)}"
    config = Config(database_url=url, redis_url=REDIS_URL, redis_prefix=prefix, master_key=common.MASTER_KEY,
                    shards=args.shards)
    db = connect_database(url)
    ids = [a for a, _ in accounts]
    transfer_ids, claim_ids = ids[:args.users], ids[args.users:args.users + args.claimants]
    names = {a: n for a, n in Account.select(Account.id, Account.username).where(Account.id.in_(transfer_ids)).tuples()}
    Account.update(password_hash=hash_secret(PASSWORD), pay_password_hash=hash_secret(PAY_PASSWORD)).where(
        Account.id.in_(transfer_ids)).execute()
    claim_tokens = [secrets.token_urlsafe(32) for _ in claim_ids]
    expires = now_ms() + 3_600_000
    with db.atomic():
        sql.insert_many(db, "web_session", ("token_hash", "account_id", "created_at", "expires_at"),
                        [(token_hash(t), a, now_ms(), expires) for t, a in zip(claim_tokens, claim_ids)])
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(config, port, args.threads, Path(tmp) / "serve.log")
        base = f"http://127.0.0.1:{port}"
        try:
            http = requests.Session()
            tokens = []
            for a in transfer_ids:
                answer = http.post(base + "/api/v1/sessions", json={"username": names[a], "password": PASSWORD},
                                   timeout=30)
                answer.raise_for_status()
                tokens.append(answer.json()["token"])
            user_names = [names[a] for a in transfer_ids]
            for i, token in enumerate(tokens):  # each session's one argon2 pay-password check
                answer = http.post(base + "/api/v1/transfers", timeout=30, headers={
                    "Authorization": f"Bearer {token}", "Idempotency-Key": f"warm-{i}"}, json={
                    "to_username": user_names[(i + 1) % len(tokens)], "asset": "ETH", "amount": "1",
                    "pay_password": PAY_PASSWORD})
                assert answer.status_code == 201, answer.text
            codes = []
            for p in range(args.http_packets):
                answer = http.post(base + "/api/v1/red-packets", timeout=30, headers={
                    "Authorization": f"Bearer {tokens[0]}", "Idempotency-Key": f"packet-{p}"}, json={
                    "asset": "ETH", "total": str(SHARES * 10**6), "shares": SHARES, "mode": "random",
                    "expires_in_s": 3600, "pay_password": PAY_PASSWORD})
                assert answer.status_code == 201, answer.text
                codes.append(answer.json()["code"])
            common_data = {"nthreads": args.wrk_threads, "run_id": prefix}
            transfer_script = lua("transfers", {**common_data, "tokens": tokens, "names": user_names,
                                                "pay_password": PAY_PASSWORD})
            claim_script = lua("claims", {**common_data, "claim_tokens": claim_tokens, "codes": codes})
            # Claimants were inserted, not registered, and their sessions too: one GET /balances each resolves the
            # session and the account's shard once, as a login and a registration would have cached them.
            warm = lua("warm", {**common_data, "claim_tokens": claim_tokens})
            report["session_warm_up"] = run_wrk("warm", base + "/api/v1/balances", warm, args, proc.pid,
                                                seconds=max(3, args.claimants // 800))
            runs = [run_wrk("transfers", base + "/api/v1/transfers", transfer_script, args, proc.pid),
                    run_wrk("claims", base + "/api/v1/red-packets", claim_script, args, proc.pid),
                    run_wrk("transfers", base + "/api/v1/transfers", lua("transfers", {
                        **common_data, "run_id": prefix + "b", "tokens": tokens, "names": user_names,
                        "pay_password": PAY_PASSWORD}), args, proc.pid)]
            started = time.monotonic()
            while Outbox.select().where(Outbox.delivered_at.is_null()).count():
                if time.monotonic() > started + DRAIN_TIMEOUT_S:
                    raise RuntimeError("the outbox did not drain")
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            report["serve_exit_code"] = proc.wait(timeout=60)
    claims = runs[1]
    assert claims["requests"] <= args.claimants * args.http_packets, "more claims than (claimant, packet) pairs"
    transfer_rate = (runs[0]["per_second"] + runs[2]["per_second"]) / 2
    report.update(runs=runs, transfers_mean_per_second=round(transfer_rate),
                  claims_over_transfers=round(claims["per_second"] / transfer_rate, 2),
                  claim_rows=RedPacketClaim.select().count(),
                  transfer_operations=Operation.select().where(Operation.kind == "transfer").count())
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()
    return report


# -- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--senders", type=int, default=4, help="threads asking the actors")
    p.add_argument("--window", type=int, default=64, help="asks each sender keeps in flight")
    p.add_argument("--transfers", type=int, default=60_000, help="baseline transfers through the actors")
    p.add_argument("--claims-packets", type=int, default=4, help="packets of 10,000 shares claimed through the actors")
    p.add_argument("--users", type=int, default=64, help="HTTP transfer users (logged in)")
    p.add_argument("--claimants", type=int, default=10_000, help="HTTP claimants (sessions made directly)")
    p.add_argument("--http-packets", type=int, default=3, help="packets claimed over HTTP (10,000 shares each)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--threads", type=int, default=64, help="`wallet serve --threads`")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--skip-actors", action="store_true", help="only the HTTP half (the accounts are funded anyway)")
    p.add_argument("--json")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.skip_http and shutil.which("wrk") is None:
        print("wrk is missing: `apt-get install wrk` (make bench installs it)", file=sys.stderr)
        return 2
    report: dict = {"machine": common.machine_facts(), "args": vars(args), "uptime_before": common.uptime()}
    with common.bench_database() as url:
        db = connect_database(url)
        report["server"] = common.server_facts(db)
        accounts = common.create_accounts(db, max(2 * SHARES + 4 * args.shards, args.users + args.claimants),
                                          args.shards)
        db.close_all()
        if args.skip_actors:
            args.transfers, args.claims_packets = 1_000, 1
        report["actors"] = bench_actors(url, accounts, args)
        _print_actors(report["actors"])
        if not args.skip_http:
            report["http"] = bench_http(url, accounts, args)
            _print_http(report["http"])
        connect_database(url)
        audit = run_audit()
        report["audit"] = {"ok": audit.ok, "operations": audit.operations, "violations": audit.violations[:10]}
        print(f"audit: ok={audit.ok} operations={audit.operations}")
    report["uptime_after"] = common.uptime()
    print(f"machine: {report['machine']}\nbefore: {report['uptime_before']}\nafter:  {report['uptime_after']}")
    common.finish_report(report, args.json)
    return 0 if audit.ok else 1


def _print_actors(actors: dict) -> None:
    t, c = actors["transfers"], actors["claims"]
    print(f"actors transfers: {t['per_second']}/s p50 {t['p50_ms']} ms p99 {t['p99_ms']} ms ({t['count']}, "
          f"{t['errors']} errors)")
    print(f"actors claims:    {c['per_second']}/s p50 {c['p50_ms']} ms p99 {c['p99_ms']} ms ({c['count']}, "
          f"{c['errors']} errors, {c['claims_per_batch']} claims a batch, {c['cross_shard']} cross-shard, "
          f"end to end {c['end_to_end_per_second']}/s)  target >= {ACTOR_TARGET}/s: "
          f"{'met' if c['per_second'] >= ACTOR_TARGET else 'NOT met'}; claims/transfers {actors['claims_over_transfers']}")


def _print_http(http: dict) -> None:
    for run in http["runs"]:
        print(f"http {run['kind']:>9}: {run['per_second']}/s p50 {run['p50_ms']} ms p99 {run['p99_ms']} ms "
              f"errors {run['errors']} ({run['requests']} in {run['seconds']} s, server "
              f"{run['server_cpu_us_per_request']} us CPU/request, load {run['load_after']})")
    ratio = http["claims_over_transfers"]
    print(f"http claims / transfers (mean {http['transfers_mean_per_second']}/s): {ratio}  target >= "
          f"{HTTP_RATIO_TARGET}: {'met' if ratio >= HTTP_RATIO_TARGET else 'NOT met'}; claim rows {http['claim_rows']}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
