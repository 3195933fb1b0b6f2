"""The console's review queue with W waiting withdrawals (default 10,000) on MariaDB: how long a page takes to
render, through the Flask test client with a logged-in reviewer's session cookie (session lookup, CSRF token,
the queue's queries and the Jinja2 rendering: everything but the socket). Target: p99 <= 200 ms.

The withdrawal rows go in with multi-row INSERTs, as the shards store them (status `reviewing`, a fourth of
them over the four-eyes threshold with one approval already), spread over A accounts, plus as many settled ones
(`confirmed`) that the queue must skip; no money moves (the queue reads only withdrawal, approval, account,
deposit and key rows). Four shapes, rendered N times each, interleaved, after a warm-up, and as the same-run
baseline the console's account lookup page (no query of its own: the session, the CSRF token and the layout).
Printed: wall-time p50/p99/max and the rendering thread's CPU time (p50), which the machine's load moves less:

    first page, unfiltered          /admin/withdrawals
    deep keyset page, unfiltered    /admin/withdrawals?after=<id of the 9,000th waiting row>
    first page, filtered            /admin/withdrawals?asset=ETH&min=0.5&max=2
    deep keyset page, filtered      the same, after the same id

    .venv/bin/python bench/review_queue.py [--withdrawals 10000] [--accounts 500] [--renders 200] [--json out.json]
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # bench/ last: `import http` must find the standard library

import argparse  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import pyotp  # noqa: E402
from eth_utils import to_checksum_address  # noqa: E402

import common  # noqa: E402
from app.system import ActorSystem  # noqa: E402
from core.config import Config  # noqa: E402
from core.keys import KeyRing  # noqa: E402
from storage import admins, sql  # noqa: E402
from storage.db import connect_database  # noqa: E402
from storage.models import now_ms  # noqa: E402
from web import create_app  # noqa: E402
from web.security import hash_secret  # noqa: E402

ETH = 10**18
SHARDS = 4
PASSWORD = "bench staff password"
COLUMNS = ("op_id", "account_id", "shard", "asset", "to_address", "amount", "fee", "speed", "status",
           "approvals_needed", "needs_operator", "created_at", "updated_at")
CSRF_RE = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')


def insert_withdrawals(db, accounts: list[tuple[int, int]], waiting: int, rng: random.Random) -> list[int]:
    """`waiting` reviewing withdrawals and as many confirmed ones, interleaved; returns the reviewing ids."""
    now = now_ms()
    destinations = [to_checksum_address("0x" + f"{rng.getrandbits(160):040x}") for _ in range(waiting // 4)]
    rows = []
    for i in range(2 * waiting):
        account_id, shard = accounts[i % len(accounts)]
        status = "reviewing" if i % 2 == 0 else "confirmed"
        amount = rng.randrange(ETH // 100, 4 * ETH)
        rows.append((f"bench-w-{i}", account_id, shard, "ETH", rng.choice(destinations), amount, 10**15,
                     "standard", status, 2 if amount > 3 * ETH else 1, 0, now - (2 * waiting - i) * 1000, now))
    with db.atomic():
        for start in range(0, len(rows), 1000):
            sql.insert_many(db, "withdrawal", COLUMNS, rows[start:start + 1000])
    ids = [i for (i,) in db.execute_sql("SELECT id FROM withdrawal WHERE status = 'reviewing' ORDER BY id")]
    four_eyes = [i for (i,) in db.execute_sql(
        "SELECT id FROM withdrawal WHERE status = 'reviewing' AND approvals_needed = 2 ORDER BY id")]
    with db.atomic():
        for start in range(0, len(four_eyes), 1000):
            sql.insert_many(db, "withdrawal_approval", ("withdrawal_id", "admin_id", "admin_name", "created_at"),
                            [(w, 1, "first-reviewer", now) for w in four_eyes[start:start + 1000]])
    return ids


def log_in(app, clock_ms: int, secret: str):
    client = app.test_client()
    token = CSRF_RE.search(client.get("/admin/login").get_data(as_text=True)).group(1)
    answer = client.post("/admin/login", data={"csrf_token": token, "name": "bench-reviewer", "password": PASSWORD,
                                               "code": pyotp.TOTP(secret).at(clock_ms // 1000)})
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]
    return client


def measure(client, shapes: list[tuple[str, str, int | None]], renders: int) -> list[dict]:
    """Each shape rendered `renders` times, the shapes interleaved (a load spike from elsewhere on the machine
    falls on all of them alike), after a warm-up of every shape. Wall time and this thread's CPU time."""
    for _ in range(20):
        for _, path, _ in shapes:
            client.get(path)
    wall: dict[str, list[float]] = {path: [] for _, path, _ in shapes}
    cpu: dict[str, list[float]] = {path: [] for _, path, _ in shapes}
    bodies: dict[str, str] = {}
    for _ in range(renders):
        for _, path, _ in shapes:
            start, start_cpu = time.perf_counter(), time.thread_time()
            answer = client.get(path)
            wall[path].append((time.perf_counter() - start) * 1000)
            cpu[path].append((time.thread_time() - start_cpu) * 1000)
            assert answer.status_code == 200, (path, answer.status_code)
            bodies[path] = answer.get_data(as_text=True)
    results = []
    for name, path, rows_expected in shapes:
        rows = bodies[path].count('<tr id="withdrawal-')
        assert rows_expected is None or rows == rows_expected, (path, rows, rows_expected)
        times = sorted(wall[path])
        results.append({"shape": name, "path": path, "rows": rows, "p50_ms": round(common.percentile(times, 50), 2),
                        "p99_ms": round(common.percentile(times, 99), 2), "max_ms": round(times[-1], 2),
                        "cpu_p50_ms": round(common.percentile(sorted(cpu[path]), 50), 2)})
    return results


def explain(db, sql_text: str) -> list[tuple]:
    return [tuple(row) for row in db.execute_sql("EXPLAIN " + sql_text)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--withdrawals", type=int, default=10_000, help="waiting (reviewing) withdrawals")
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--renders", type=int, default=200, help="renders of each page shape")
    parser.add_argument("--json")
    args = parser.parse_args()
    report = {"uptime_before": common.uptime(), "machine": common.machine_facts()}
    print(f"before: {report['uptime_before']}")
    rng = random.Random(7)
    with common.bench_database() as url:
        db = connect_database(url)
        accounts = common.create_accounts(db, args.accounts, SHARDS)
        started = time.perf_counter()
        waiting = insert_withdrawals(db, accounts, args.withdrawals, rng)
        report["insert_s"] = round(time.perf_counter() - started, 2)
        report["server"] = common.server_facts(db)
        config = Config(database_url=url, master_key=common.MASTER_KEY, shards=SHARDS)
        system = ActorSystem(config).start()
        try:
            app = create_app(system)
            clock = now_ms()
            app.extensions["console"].clock = lambda: clock
            created = admins.create_admin("bench-reviewer", "reviewer", hash_secret(PASSWORD),
                                          KeyRing.single(common.MASTER_KEY))
            client = log_in(app, clock, created.totp_secret)
            deep = waiting[int(len(waiting) * 0.9)]
            filtered = "asset=ETH&min=0.5&max=2"
            filtered_ids = [i for (i,) in db.execute_sql(
                "SELECT id FROM withdrawal WHERE status = 'reviewing' AND asset = 'ETH' AND amount >= %s "
                "AND amount <= %s AND id > %s ORDER BY id LIMIT 50", (ETH // 2, 2 * ETH, deep))]
            # the baseline: a page with no query of its own (session, CSRF token, layout), in the same run
            shapes = [("baseline: account lookup page", "/admin/accounts", None),
                      ("first page, unfiltered", "/admin/withdrawals", 50),
                      ("deep keyset page, unfiltered", f"/admin/withdrawals?after={deep}",
                       min(50, sum(1 for i in waiting if i > deep))),
                      ("first page, filtered", f"/admin/withdrawals?{filtered}", 50),
                      ("deep keyset page, filtered", f"/admin/withdrawals?{filtered}&after={deep}", len(filtered_ids))]
            report["results"] = measure(client, shapes, args.renders)
            for result in report["results"]:
                print(f"{result['shape']:32} p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
                      f"max {result['max_ms']:7.2f} ms  CPU p50 {result['cpu_p50_ms']:6.2f} ms  "
                      f"({result['rows']} rows, {args.renders} renders)")
            report["explain_filtered_deep"] = explain(db, (
                "SELECT * FROM withdrawal WHERE status = 'reviewing' AND asset = 'ETH' AND amount >= "
                f"{ETH // 2} AND amount <= {2 * ETH} AND id > {deep} ORDER BY id LIMIT 51"))
            report["explain_unfiltered_deep"] = explain(db, (
                f"SELECT * FROM withdrawal WHERE status = 'reviewing' AND id > {deep} ORDER BY id LIMIT 51"))
            for key in ("explain_unfiltered_deep", "explain_filtered_deep"):
                for row in report[key]:
                    print(f"{key}: {row}")
        finally:
            system.stop()
            db.close_all()
    print(f"withdrawals: {args.withdrawals} reviewing + {args.withdrawals} confirmed over {args.accounts} accounts, "
          f"inserted in {report['insert_s']} s")
    common.finish_report(report, args.json)


if __name__ == "__main__":
    main()
