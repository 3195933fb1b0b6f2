"""Address pool generation: N sealed deposit keys into MariaDB (target: 100,000 in <= 60 s).

Times `storage.pool.generate_pool` (what `wallet pool generate N` runs) on a fresh database, then splits
the cost: key generation and sealing alone (secp256k1 key, keccak address, EIP-55 checksum, a data key,
AES-256-GCM of the key under it and of the data key under the master key) over a sample, the rest being the
inserts. Then times `wallet keys rotate`'s work over the same pool: every data key re-wrapped under a new
master key version (`storage.rotation.rotate_keys`).

    .venv/bin/python bench/pool.py [--keys 100000] [--json out.json]
"""

from __future__ import annotations

import sys

# `python bench/x.py` puts bench/ first on the path, where bench/http.py would shadow the standard
# library's `http` package; look bench/ up last instead (for `import common`).
sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402 - after the path fix above
import time

import common
from storage.db import connect_database
from storage.models import PoolKey
from core.keys import KeyRing, generate_sealed
from storage.pool import generate_pool
from storage.rotation import rotate_keys

TARGET_S = 60.0
SAMPLE_KEYS = 5000
ROTATED_MASTER_KEY = bytes.fromhex("33" * 32)


def key_cost_us(ring: KeyRing, sample: int) -> float:
    started = time.perf_counter()
    for _ in range(sample):
        generate_sealed(ring)
    return (time.perf_counter() - started) / sample * 1e6


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    ring = KeyRing.single(common.MASTER_KEY)
    report: dict = {"machine": common.machine_facts(), "uptime_before": common.uptime(), "keys": args.keys}
    with common.bench_database() as url:
        db = connect_database(url)
        report["server"] = common.server_facts(db)
        with common.CpuMeter() as cpu:
            started = time.perf_counter()
            stored = generate_pool(db, ring, args.keys)
            seconds = time.perf_counter() - started
        count = PoolKey.select().count()
        rotated_ring = KeyRing({1: common.MASTER_KEY, 2: ROTATED_MASTER_KEY})
        started = time.perf_counter()
        rotation = rotate_keys(db, rotated_ring)
        rotate_seconds = time.perf_counter() - started
        db.close_all()
    if rotation.pool_rewrapped != args.keys:
        print(f"expected {args.keys} keys re-wrapped, got {rotation}", file=sys.stderr)
        return 1
    if count != args.keys or stored != args.keys:
        print(f"expected {args.keys} keys, stored {stored}, found {count}", file=sys.stderr)
        return 1
    per_key_us = key_cost_us(ring, SAMPLE_KEYS)
    report["pool"] = {"seconds": round(seconds, 2), "keys_per_second": round(args.keys / seconds),
                      "target_seconds_for_100k": TARGET_S,
                      "projected_seconds_for_100k": round(seconds / args.keys * 100_000, 2),
                      "keygen_encrypt_us_per_key": round(per_key_us, 1),
                      "rotate_seconds": round(rotate_seconds, 2),
                      "rotate_keys_per_second": round(args.keys / rotate_seconds),
                      "python_cpu_s": round(cpu.python_s, 2), "mariadb_cpu_s": round(cpu.mariadb_s, 2)}
    pool = report["pool"]
    print(f"pool: {args.keys} keys in {pool['seconds']} s ({pool['keys_per_second']} keys/s; "
          f"target 100,000 in <= {TARGET_S:.0f} s); key generation + sealing alone "
          f"{pool['keygen_encrypt_us_per_key']} us/key; CPU python {pool['python_cpu_s']} s, "
          f"mariadb {pool['mariadb_cpu_s']} s")
    print(f"rotate: {args.keys} data keys re-wrapped under a new master key in {pool['rotate_seconds']} s "
          f"({pool['rotate_keys_per_second']} keys/s)")
    common.finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
