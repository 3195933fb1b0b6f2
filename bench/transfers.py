"""Durable internal transfers per second: the shard actors (group commit) against the naive design.

One run, one fresh MariaDB database, the same accounts for both:

1. actors: the real ActorSystem (allocator + N TransrvShard actors, `Config` defaults but the shard
   count). S in-process sender threads (S >= N; sender i sends to the accounts of shard i % N) each keep
   K asks in flight: `ActorRef.ask(Transfer, block=False)`, the call Router.ask_shard makes, without
   blocking, so S*K transfers wait at any time. Half the transfers go to an account on another shard
   (outbox path). A transfer counts when its future resolves, which the shard does only after the
   batch's transaction committed. Latency = from the ask to the moment the sender's `get()` returned
   (a sender collects its futures oldest first; its shard answers in that order). The rate is
   acknowledged transfers over the senders' time; `end_to_end_per_second` also waits until the outbox
   has drained (every cross-shard credit applied on its target shard). Then `wallet audit` must pass.
2. naive: 16 threads, each with its own connection; one transaction per transfer: SELECT both balance
   rows FOR UPDATE (in id order), UPDATE both, INSERT the operation and its posting, COMMIT.

    .venv/bin/python bench/transfers.py [--transfers 200000] [--senders 4] [--window 64] [--json out.json]
"""

from __future__ import annotations

import sys

# `python bench/x.py` puts bench/ first on the path, where bench/http.py would shadow the standard
# library's `http` package; look bench/ up last instead (for `import common`).
sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402 - after the path fix above
import collections
import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pykka
import pymysql

import common
from core import messages as m
from storage.db import MYSQL_SQL_MODE, connect_database
from app.audit import run_audit
from core.config import Config
from core.errors import WalletError
from app.system import ActorSystem
from devnet.waiting import wait_until

FUND_WEI = 10**18
DRAIN_TIMEOUT_S = 120.0
FUTURE_TIMEOUT_S = 60.0
NAIVE_DEADLOCK_RETRIES = 5


@dataclass
class RunResult:
    name: str
    transfers: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.transfers / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        lat = sorted(self.latencies_s)
        return {"transfers": self.transfers, "errors": self.errors, "seconds": round(self.seconds, 3),
                "per_second": round(self.per_second), "p50_ms": round(common.percentile(lat, 50) * 1000, 2),
                "p99_ms": round(common.percentile(lat, 99) * 1000, 2),
                "max_ms": round((lat[-1] if lat else float("nan")) * 1000, 2), **self.extra}


# -- workload ----------------------------------------------------------------------------------------------


Planned = tuple[str, int, int, int, int]  # (op_id, from account, to account, to shard, amount)


def plan_transfers(accounts: list[tuple[int, int]], count: int, cross_share: float, seed: int,
                   prefix: str) -> list[Planned]:
    """The workload, drawn before the clock starts. Plain tuples, which the garbage collector stops
    tracking, so a big workload adds no collection pauses to the measured system; a sender turns each
    into a Transfer command just before it asks."""
    rng = random.Random(seed)
    by_shard: dict[int, list[int]] = collections.defaultdict(list)
    for account_id, shard in accounts:
        by_shard[shard].append(account_id)
    shards = sorted(by_shard)
    planned = []
    for n in range(count):
        src_shard = rng.choice(shards)
        others = [s for s in shards if s != src_shard]
        dst_shard = rng.choice(others) if others and rng.random() < cross_share else src_shard
        src = rng.choice(by_shard[src_shard])
        dst = src
        while dst == src:
            dst = rng.choice(by_shard[dst_shard])
        planned.append((f"{prefix}{n}", src, dst, dst_shard, rng.randint(1, 1000)))
    return planned


def transfer(planned: Planned) -> m.Transfer:
    op_id, src, dst, dst_shard, amount = planned
    return m.Transfer(op_id=op_id, account_id=src, to_account=dst, to_shard=dst_shard, asset="ETH", amount=amount)


# -- the actors ----------------------------------------------------------------------------------------------


def start_actors(url: str, shards: int, batch_max: int, accounts: list[tuple[int, int]]) -> ActorSystem:
    config = Config(database_url=url, master_key=common.MASTER_KEY, shards=shards, shard_batch_max=batch_max,
                    ask_timeout_s=FUTURE_TIMEOUT_S)
    system = ActorSystem(config).start()
    for account_id, shard in accounts:  # bulk-created accounts: tell the directory where they live
        system.directory.remember(account_id, f"bench-{account_id}", shard)
    return system


def fund(system: ActorSystem, accounts: list[tuple[int, int]]) -> None:
    futures = [system.router.shard_ref(shard).ask(
        m.Credit(op_id=f"fund-{account_id}", account_id=account_id, asset="ETH", amount=FUND_WEI), block=False)
        for account_id, shard in accounts]
    for future in futures:
        future.get(timeout=FUTURE_TIMEOUT_S)


def run_senders(system: ActorSystem, commands: list[Planned], senders: int, window: int,
                name: str) -> RunResult:
    refs = [system.router.shard_ref(s) for s in range(system.router.shard_count)]
    shard_of = system.router.shard_of
    parts = split_by_source_shard(commands, shard_of, senders, system.router.shard_count)
    latencies: list[list[float]] = [[] for _ in range(senders)]
    errors = [0] * senders
    start_gate = threading.Barrier(senders + 1)

    def sender(index: int) -> None:
        lat, inflight = latencies[index], collections.deque()
        clock = time.perf_counter
        start_gate.wait()
        for planned in parts[index]:
            if len(inflight) >= window:
                errors[index] += collect(inflight.popleft(), lat, clock)
            cmd = transfer(planned)
            inflight.append((refs[shard_of(cmd.account_id)].ask(cmd, block=False), clock()))
        while inflight:
            errors[index] += collect(inflight.popleft(), lat, clock)

    threads = [threading.Thread(target=sender, args=(i,), name=f"sender-{i}") for i in range(senders)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return RunResult(name, transfers=len(commands) - sum(errors), errors=sum(errors), seconds=seconds,
                     latencies_s=[x for part in latencies for x in part])


def split_by_source_shard(commands: list[Planned], shard_of, senders: int, shards: int) -> list[list[Planned]]:
    """Sender i sends only to shard i % shards. A shard answers its mailbox in order, so a sender that
    collects its futures oldest-first never waits behind a slower shard while newer answers sit ready."""
    by_shard: dict[int, list[Planned]] = collections.defaultdict(list)
    for planned in commands:
        by_shard[shard_of(planned[1])].append(planned)
    parts = []
    for i in range(senders):
        shard, peers = i % shards, range(i % shards, senders, shards)
        parts.append(by_shard[shard][peers.index(i)::len(peers)])
    return parts


def collect(item: tuple[pykka.Future, float], latencies: list[float], clock) -> int:
    future, sent = item
    try:
        future.get(timeout=FUTURE_TIMEOUT_S)
    except WalletError:
        return 1
    latencies.append(clock() - sent)
    return 0


def wait_outbox_drained(system: ActorSystem) -> float:
    """Seconds until every shard's outbox is acknowledged and its mailbox is empty."""
    started = time.perf_counter()

    def drained() -> bool:
        stats = [system.router.ask_shard(s, m.GetStats()) for s in range(system.router.shard_count)]
        return all(s.outbox_undelivered == 0 and s.queue_depth == 0 for s in stats)

    wait_until(drained, DRAIN_TIMEOUT_S, "every shard's outbox acknowledged and mailbox empty", interval_s=0.05)
    return time.perf_counter() - started


def bench_actors(url: str, accounts: list[tuple[int, int]], args: argparse.Namespace) -> RunResult:
    system = start_actors(url, args.shards, args.batch_max, accounts)
    try:
        fund(system, accounts)
        warmup = plan_transfers(accounts, args.warmup, args.cross_share, seed=1, prefix="w")
        run_senders(system, warmup, args.senders, args.window, "warm-up")
        wait_outbox_drained(system)
        batches_before = sum(system.router.ask_shard(s, m.GetStats()).batches for s in range(args.shards))
        commands = plan_transfers(accounts, args.transfers, args.cross_share, seed=2, prefix="t")
        with common.CpuMeter() as cpu:  # until the outbox drained: the credit halves are part of the work
            result = run_senders(system, commands, args.senders, args.window, "actors")
            drain_s = wait_outbox_drained(system)
        batches = sum(system.router.ask_shard(s, m.GetStats()).batches for s in range(args.shards))
    finally:
        system.stop()
    cross = sum(1 for _, src, _, dst_shard, _ in commands if dst_shard != system.router.shard_of(src))
    # Batches include the credit halves of cross-shard transfers, applied on the target shard.
    result.extra = {"shards": args.shards, "senders": args.senders, "window": args.window,
                    "in_flight": args.senders * args.window, "cross_shard": cross,
                    "outbox_drain_s": round(drain_s, 3),
                    "end_to_end_per_second": round(result.transfers / (result.seconds + drain_s)),
                    "batches": batches - batches_before,
                    "commands_per_batch": round((len(commands) + cross) / max(1, batches - batches_before), 1),
                    **cpu.per_item_us(result.transfers)}
    return result


# -- the naive baseline ------------------------------------------------------------------------------------------


def naive_connection(url: str) -> pymysql.connections.Connection:
    parsed = urlparse(url)
    return pymysql.connect(host=parsed.hostname, port=parsed.port or 3306, user=parsed.username or "root",
                           password=parsed.password or "", database=parsed.path.lstrip("/"), charset="utf8mb4",
                           autocommit=False, init_command=f"SET sql_mode='{MYSQL_SQL_MODE}'")


def naive_transfer(cur, cmd: m.Transfer, shard: int, now: int) -> None:
    """One transfer, one transaction, row locks taken in account-id order so two transfers never deadlock."""
    src, dst = cmd.account_id, cmd.to_account
    cur.execute("SELECT account_id, available FROM balance WHERE asset = %s AND account_id IN (%s, %s) "
                "ORDER BY account_id FOR UPDATE", (cmd.asset, src, dst))
    available = dict(cur.fetchall())
    if available.get(src, 0) < cmd.amount:
        raise ValueError("insufficient funds")
    cur.execute("UPDATE balance SET available = available - %s WHERE account_id = %s AND asset = %s",
                (cmd.amount, src, cmd.asset))
    cur.execute("UPDATE balance SET available = available + %s WHERE account_id = %s AND asset = %s",
                (cmd.amount, dst, cmd.asset))
    fingerprint = hashlib.sha256(f"{src}:{dst}:{cmd.asset}:{cmd.amount}".encode()).hexdigest()
    cur.execute("INSERT INTO operation (op_id, shard, kind, account_id, fingerprint, result, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (cmd.op_id, shard, "naive", src, fingerprint, json.dumps({"op_id": cmd.op_id, "status": "completed"}),
                 now))
    cur.execute("INSERT INTO posting (op_id, leg, shard, asset, debit_account, debit_bucket, credit_account, "
                "credit_bucket, amount, created_at) VALUES (%s, 0, %s, %s, %s, 'a', %s, 'a', %s, %s)",
                (cmd.op_id, shard, cmd.asset, src, dst, cmd.amount, now))


def bench_naive(url: str, accounts: list[tuple[int, int]], args: argparse.Namespace) -> RunResult:
    shard_of = dict(accounts)
    commands = plan_transfers(accounts, args.naive_transfers, args.cross_share, seed=3, prefix="n")
    parts = [commands[i::args.naive_threads] for i in range(args.naive_threads)]
    latencies: list[list[float]] = [[] for _ in parts]
    errors = [0] * len(parts)
    start_gate = threading.Barrier(len(parts) + 1)

    def worker(index: int) -> None:
        conn = naive_connection(url)
        try:
            cur = conn.cursor()
            start_gate.wait()
            for cmd in parts[index]:
                sent = time.perf_counter()
                if run_naive_once(conn, cur, transfer(cmd), shard_of[cmd[1]]):
                    latencies[index].append(time.perf_counter() - sent)
                else:
                    errors[index] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), name=f"naive-{i}") for i in range(len(parts))]
    for thread in threads:
        thread.start()
    with common.CpuMeter() as cpu:
        start_gate.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
    done = len(commands) - sum(errors)
    return RunResult("naive", transfers=done, errors=sum(errors), seconds=seconds,
                     latencies_s=[x for part in latencies for x in part],
                     extra={"threads": args.naive_threads, **cpu.per_item_us(done)})


def commit_round_trip_us(url: str, rounds: int = 500) -> float:
    """One connection, UPDATE one row + COMMIT, back to back: the price of a durable commit here."""
    conn = naive_connection(url)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE commit_probe (id INT PRIMARY KEY, n BIGINT NOT NULL)")
        cur.execute("INSERT INTO commit_probe VALUES (1, 0)")
        conn.commit()
        started = time.perf_counter()
        for _ in range(rounds):
            cur.execute("UPDATE commit_probe SET n = n + 1 WHERE id = 1")
            conn.commit()
        elapsed = time.perf_counter() - started
        cur.execute("DROP TABLE commit_probe")
        return round(elapsed / rounds * 1e6, 1)
    finally:
        conn.close()


def run_naive_once(conn, cur, cmd: m.Transfer, shard: int) -> bool:
    for _ in range(NAIVE_DEADLOCK_RETRIES):
        try:
            naive_transfer(cur, cmd, shard, int(time.time() * 1000))
            conn.commit()
            return True
        except pymysql.err.OperationalError as exc:  # 1213 deadlock, 1205 lock wait timeout: retry
            conn.rollback()
            if exc.args[0] not in (1205, 1213):
                raise
        except ValueError:
            conn.rollback()
            return False
    return False


# -- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--batch-max", type=int, default=2000, help="shard batch bound (Config.shard_batch_max)")
    p.add_argument("--senders", type=int, default=4, help="sender threads")
    p.add_argument("--window", type=int, default=64, help="asks each sender keeps in flight")
    p.add_argument("--transfers", type=int, default=200_000, help="transfers through the actors")
    p.add_argument("--warmup", type=int, default=10_000)
    p.add_argument("--cross-share", type=float, default=0.5, help="share of transfers to another shard")
    p.add_argument("--naive-threads", type=int, default=16)
    p.add_argument("--naive-transfers", type=int, default=20_000)
    p.add_argument("--skip-audit", action="store_true")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.senders < args.shards:
        raise SystemExit("--senders must be at least --shards (each sender sends to one shard)")
    report: dict = {"machine": common.machine_facts(), "uptime_before": common.uptime(), "args": vars(args)}
    with common.bench_database() as url:
        db = connect_database(url)
        report["server"] = common.server_facts(db)
        accounts = common.create_accounts(db, args.accounts, args.shards)
        db.close_all()
        report["server"]["update_commit_round_trip_us"] = commit_round_trip_us(url)
        actors = bench_actors(url, accounts, args)
        report["actors"] = actors.summary()
        print_result(actors)
        if not args.skip_audit:
            connect_database(url)
            audit = run_audit()
            report["audit"] = {"ok": audit.ok, "operations": audit.operations, "postings": audit.postings,
                               "violations": audit.violations[:5]}
            print(f"audit: ok={audit.ok} operations={audit.operations} postings={audit.postings}")
            if not audit.ok:
                print("\n".join(audit.violations[:20]), file=sys.stderr)
        if not args.skip_naive:
            naive = bench_naive(url, accounts, args)
            report["naive"] = naive.summary()
            print_result(naive)
            report["speedup"] = round(actors.per_second / naive.per_second, 1) if naive.per_second else None
            print(f"speedup actors/naive: {report['speedup']}x")
    common.finish_report(report, args.json)
    return 0 if report.get("audit", {"ok": True})["ok"] else 1


def print_result(result: RunResult) -> None:
    s = result.summary()
    rest = {k: v for k, v in s.items() if k not in ("transfers", "errors", "seconds", "per_second", "p50_ms",
                                                   "p99_ms", "max_ms")}
    print(f"{result.name}: {s['per_second']} transfers/s ({s['transfers']} in {s['seconds']} s, {s['errors']} errors)"
          f" p50 {s['p50_ms']} ms p99 {s['p99_ms']} ms max {s['max_ms']} ms {rest}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
