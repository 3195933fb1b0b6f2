"""Where a shard's batch spends its time, without actors or threads: one ShardLedger on MariaDB applies
batches of transfers (half to another shard, i.e. with an outbox row, whose delivery marks go with the
next batch) and reports Python and MariaDB CPU per command and wall time per SQL statement kind.

A diagnostic for work on the hot path (ledger/shard.py, storage/sql.py); `bench/transfers.py` is the
end-to-end figure.

    .venv/bin/python bench/ledger_batch.py [--batch 200] [--commands 60000] [--profile]
"""

from __future__ import annotations

import sys

# `python bench/x.py` puts bench/ first on the path, where bench/http.py would shadow the standard
# library's `http` package; look bench/ up last instead (for `import common`).
sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402 - after the path fix above
import collections
import cProfile
import pstats
import random
import time

import common
from core import messages as m
from ledger.shard import ShardLedger
from storage import sql
from storage.db import connect_database
from core.money import ETH, AssetRegistry

ACCOUNTS = 10_000


class StatementClock:
    """Wall time per statement kind (its first words), by wrapping storage.sql's raw execution and the
    database's BEGIN and COMMIT."""

    def __init__(self, db) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.db = db
        self._execute_raw = sql._execute_raw

    def _timed(self, kind: str, call):
        def timed(*args):
            started = time.perf_counter()
            try:
                return call(*args)
            finally:
                self.seconds[kind(*args)] += time.perf_counter() - started
        return timed

    def __enter__(self) -> StatementClock:
        sql._execute_raw = self._timed(lambda db, statement: " ".join(statement.split()[:3]), self._execute_raw)
        self.db.begin = self._timed(lambda: "BEGIN", self.db.begin)
        self.db.commit = self._timed(lambda: "COMMIT", self.db.commit)
        return self

    def __exit__(self, *exc: object) -> None:
        sql._execute_raw = self._execute_raw
        del self.db.begin, self.db.commit  # back to the class's methods


def make_batches(mine: list[int], other: list[int], count: int, size: int) -> list[list[m.Transfer]]:
    rng = random.Random(1)
    batches = []
    for b in range(count // size):
        batch = []
        for i in range(size):
            src = rng.choice(mine)
            if i % 2:
                dst, dst_shard = rng.choice(other), 1
            else:
                dst, dst_shard = src, 0
                while dst == src:
                    dst = rng.choice(mine)
            batch.append(m.Transfer(op_id=f"b{b}-{i}", account_id=src, to_account=dst, to_shard=dst_shard,
                                    asset="ETH", amount=rng.randint(1, 1000)))
        batches.append(batch)
    return batches


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=200, help="commands per batch")
    p.add_argument("--commands", type=int, default=60_000)
    p.add_argument("--profile", action="store_true", help="print a cProfile of the batches (slows them)")
    args = p.parse_args(argv)
    with common.bench_database() as url:
        db = connect_database(url)
        accounts = common.create_accounts(db, ACCOUNTS, shards=2)
        ledger = ShardLedger(0, db, AssetRegistry([ETH]))
        ledger.load()
        mine = [a for a, shard in accounts if shard == 0]
        other = [a for a, shard in accounts if shard == 1]
        ledger.apply_batch([m.Credit(op_id=f"fund-{a}", account_id=a, asset="ETH", amount=10**18) for a in mine])
        batches = make_batches(mine, other, args.commands, args.batch)
        commands = len(batches) * args.batch
        profile = cProfile.Profile() if args.profile else None
        with StatementClock(db) as statements, common.CpuMeter() as cpu:
            started = time.perf_counter()
            if profile:
                profile.enable()
            for batch in batches:
                outcome = ledger.apply_batch(batch)
                ledger.delivered([credit.op_id for _, credit in outcome.credits_to_send])  # acked at once
            if profile:
                profile.disable()
            seconds = time.perf_counter() - started
        db.close_all()
    per = cpu.per_item_us(commands)
    print(f"batch {args.batch}: {commands / seconds:.0f} commands/s single-threaded; per command: "
          f"python {per['python_cpu_us_per_transfer']} us CPU, mariadb {per['mariadb_cpu_us_per_transfer']} us "
          f"CPU, wall {seconds / commands * 1e6:.1f} us")
    for kind, spent in statements.seconds.most_common():
        print(f"  {spent / commands * 1e6:6.1f} us/command  {kind}")
    print(f"load: {common.load_average()}")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
