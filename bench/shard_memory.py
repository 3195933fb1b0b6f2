"""Memory of one shard holding N accounts (default 100,000), each with an ETH balance, loaded from MariaDB.

Builds a fresh database with N user accounts bound to shard 0 and a balance row each (about 1 ETH in
wei, random), then measures `ShardLedger.load()` (what a TransrvShard does in on_start) two ways:
- retained Python heap (tracemalloc, after a full collection): what the shard keeps;
- process RSS before/after (no tracing), which also counts the allocator's slack and the driver's
  buffered result set.
Then the shard's other sizeable memory, its replay cache (recent op ids), filled to its bound.

    .venv/bin/python bench/shard_memory.py [--accounts 100000] [--json out.json]
"""

from __future__ import annotations

import sys

# `python bench/x.py` puts bench/ first on the path, where bench/http.py would shadow the standard
# library's `http` package; look bench/ up last instead (for `import common`).
sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402 - after the path fix above
import gc
import random
import time
import tracemalloc

import common
from core import messages as m
from core.limits import RECENT_OPS_MAX
from ledger.shard import ShardLedger
from storage import sql
from storage.db import connect_database
from core.money import ETH, AssetRegistry

MIB = 2**20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def seed_balances(db, accounts: list[tuple[int, int]]) -> None:
    rng = random.Random(7)
    rows = [(account_id, "ETH", str(rng.randint(10**17, 10**19)), "0") for account_id, _ in accounts]
    with db.atomic():
        sql.upsert_balances(db, rows)


def load_ledger(url: str) -> tuple[ShardLedger, float]:
    db = connect_database(url)
    ledger = ShardLedger(0, db, AssetRegistry([ETH]))
    started = time.perf_counter()
    ledger.load()
    return ledger, time.perf_counter() - started


def measure(url: str, traced: bool) -> dict:
    gc.collect()
    if traced:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    ledger, seconds = load_ledger(url)
    gc.collect()
    if traced:
        after, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result = {"retained_mib": round((after - before) / MIB, 1), "peak_mib": round((peak - before) / MIB, 1)}
    else:
        result = {"rss_delta_mib": round((rss_bytes() - before) / MIB, 1), "load_seconds": round(seconds, 2)}
    result["accounts_loaded"] = len(ledger.accounts)
    result["balances_loaded"] = len(ledger.book.balances)
    ledger.db.close_all()
    return result


def replay_cache_mib(url: str) -> float:
    """Retained heap of a shard's replay cache filled to its bound (RECENT_OPS_MAX op ids with their
    fingerprint and result), as after that many operations."""
    db = connect_database(url)
    ledger = ShardLedger(0, db, AssetRegistry([ETH]))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(RECENT_OPS_MAX):
        command = m.Transfer(op_id=f"transfer-{n:012d}-0123456789", account_id=1, to_account=2, to_shard=0,
                             asset="ETH", amount=n + 1)
        ledger._remember(command.op_id, command.fingerprint(), m.OpResult(command.op_id, "completed").to_json())
    gc.collect()
    retained = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    db.close_all()
    return round(retained / MIB, 1)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    report: dict = {"machine": common.machine_facts(), "uptime_before": common.uptime(), "accounts": args.accounts}
    with common.bench_database() as url:
        db = connect_database(url)
        report["server"] = common.server_facts(db)
        accounts = common.create_accounts(db, args.accounts, shards=1)
        seed_balances(db, accounts)
        db.close_all()
        rss = measure(url, traced=False)  # first, before tracemalloc has grown the process
        heap = measure(url, traced=True)
        cache = replay_cache_mib(url)
    per_account = heap["retained_mib"] * MIB / args.accounts
    report["shard"] = {**rss, **heap, "retained_bytes_per_account": round(per_account),
                       "replay_cache_entries_max": RECENT_OPS_MAX, "replay_cache_full_mib": cache}
    s = report["shard"]
    print(f"shard memory, {args.accounts} accounts with an ETH balance: retained {s['retained_mib']} MiB "
          f"({s['retained_bytes_per_account']} B/account, tracemalloc), load peak {s['peak_mib']} MiB, "
          f"RSS +{s['rss_delta_mib']} MiB, load {s['load_seconds']} s; replay cache at its bound "
          f"({RECENT_OPS_MAX} op ids) {cache} MiB more")
    common.finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
